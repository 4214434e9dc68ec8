"""`pvr-pipe collect`: roll out a behaviour policy in an env and store episodes as shards.

Episodes are split into shards of `episodes_per_shard`; a shard is the unit of work, of
parallelism (one env process per worker) and of resumption. Each episode's env and policy seeds
derive from the master seed and the episode's index alone, so the bytes of a shard do not depend
on how many workers ran or whether the run was interrupted.
"""

from __future__ import annotations

import errno
import multiprocessing
import queue
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable

import gymnasium
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline import __version__
from pipeline.config import CollectConfig
from pipeline.envs import check_variant, make_env
from pipeline.envs.actions import action_dim, is_discrete
from pipeline.errors import UserError
from pipeline.policies import Policy, make_policy
from pipeline.rollout import collect_episode
from pipeline.storage.disk_space import no_space_error
from pipeline.storage.manifest import ShardRecord, TrajectoryManifest
from pipeline.storage.trajectory_writer import BackgroundShardWriter, TrajectoryDatasetWriter, episode_key, shard_name
from pipeline.storage.writer_lock import writer_lock


def episode_seeds(seed: int, episodes: int) -> list[tuple[int, int]]:
    """(env seed, policy seed) per episode, independent streams derived from the master seed."""
    children = np.random.SeedSequence(seed).spawn(episodes)
    return [tuple(int(s) for s in child.generate_state(2)) for child in children]


def _make_env(cfg: CollectConfig) -> gymnasium.Env:
    return make_env(cfg.env, cfg.variant, cfg.variant_seed, frame_size=cfg.frame_size,
                    action_repeat=cfg.action_repeat, camera=cfg.camera, fast_render=cfg.fast_render)


_worker_env: dict[str, tuple[gymnasium.Env, Policy]] = {}


def collect_shard(cfg: CollectConfig, index: int, out_dir: Path,
                  on_episode: Callable[[], None] | None = None) -> ShardRecord:
    """Collect and write shard `index`; builds the env once per process."""
    key = cfg.model_dump_json()
    if key not in _worker_env:
        env = _make_env(cfg)
        _worker_env[key] = (env, make_policy(cfg.policy, env.action_space))
    env, policy = _worker_env[key]
    seeds = episode_seeds(cfg.seed, cfg.episodes)
    first = index * cfg.episodes_per_shard
    indices = range(first, min(first + cfg.episodes_per_shard, cfg.episodes))
    keys, steps, returns = [], [], []
    with BackgroundShardWriter(out_dir / shard_name(index), cfg.image_format, cfg.jpeg_quality) as writer:
        for i in indices:
            env_seed, policy_seed = seeds[i]
            episode = collect_episode(env, policy, env_seed, policy_seed, cfg.max_steps, writer.add_frame)
            episode.meta = {"env": cfg.env, "variant": cfg.variant, "variant_seed": cfg.variant_seed,
                            "policy": policy.name, "episode_index": i, "env_seed": env_seed,
                            "policy_seed": policy_seed, "steps": episode.steps,
                            "return": episode.total_return}
            writer.add_episode(episode_key(i), episode)
            keys.append(episode_key(i))
            steps.append(episode.steps)
            returns.append(episode.total_return)
            if on_episode:
                on_episode()
        sha256, size = writer.finish()
    return ShardRecord(name=shard_name(index), sha256=sha256, bytes=size, episode_keys=keys,
                       episode_seeds=[seeds[i][0] for i in indices], episode_steps=steps,
                       episode_returns=returns)


def _collect_shard_in_worker(cfg: CollectConfig, index: int, out_dir: Path, events) -> ShardRecord:
    return collect_shard(cfg, index, out_dir, on_episode=lambda: events.put(1))


def run(cfg: CollectConfig, show_progress: bool = True) -> TrajectoryManifest:
    """Collect the dataset `cfg` describes into `cfg.out`, resuming an interrupted run."""
    if cfg.out is None:
        raise UserError("no output directory; pass --out PATH (or `out:` in the config)")
    check_variant(cfg.env, cfg.variant)
    with writer_lock(cfg.out, "collect"):
        try:
            return _collect(cfg, show_progress)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            raise no_space_error(error.filename or cfg.out, _bytes_still_needed(cfg)) from None


def _bytes_still_needed(cfg: CollectConfig) -> int | None:
    """The shards not yet written, at the mean size of those that were; None before the first."""
    written = [path.stat().st_size for path in Path(cfg.out).glob("shard-*.tar")]
    if not written:
        return None
    shards = -(-cfg.episodes // cfg.episodes_per_shard)
    return (shards - len(written)) * sum(written) // len(written)


def _collect(cfg: CollectConfig, show_progress: bool) -> TrajectoryManifest:
    dataset = TrajectoryDatasetWriter(cfg.out, cfg.dataset_fingerprint())
    if dataset.manifest is not None:  # already complete: nothing to write
        return dataset.manifest
    env = _make_env(cfg)
    policy = make_policy(cfg.policy, env.action_space)
    _worker_env[cfg.model_dump_json()] = (env, policy)

    shards = -(-cfg.episodes // cfg.episodes_per_shard)
    todo = [i for i in range(shards) if not dataset.is_done(i)]
    dataset.start()
    done_episodes = cfg.episodes - sum(
        min(cfg.episodes_per_shard, cfg.episodes - i * cfg.episodes_per_shard) for i in todo)
    columns = (TextColumn(f"collect {cfg.env} [{cfg.variant}]"), BarColumn(), MofNCompleteColumn(),
               TextColumn("episodes"), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        bar = progress.add_task("collect", total=cfg.episodes, completed=done_episodes)
        if cfg.workers == 1 or len(todo) <= 1:
            for index in todo:
                dataset.record(collect_shard(cfg, index, dataset.root, lambda: progress.advance(bar)))
        else:
            _collect_in_processes(cfg, todo, dataset, lambda n: progress.advance(bar, n))

    return dataset.finish(
        env=cfg.env, variant=cfg.variant, variant_seed=cfg.variant_seed, policy=policy.name,
        seed=cfg.seed, frame_size=cfg.frame_size, image_format=cfg.image_format,
        action_dim=action_dim(env.action_space),
        action_space="discrete" if is_discrete(env.action_space) else "box", action_repeat=env.action_repeat,
        state_keys=env.state_keys, time_limit=env.time_limit, episodic=env.episodic, pipeline_version=__version__)


def _collect_in_processes(cfg: CollectConfig, todo: list[int], dataset: TrajectoryDatasetWriter,
                          advance: Callable[[int], None]) -> None:
    # spawn, not fork: GL contexts and simulator state do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(min(cfg.workers, len(todo)), context) as pool:
        events = manager.Queue()
        pending = {pool.submit(_collect_shard_in_worker, cfg, i, dataset.root, events) for i in todo}
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            while True:
                try:
                    advance(events.get_nowait())
                except queue.Empty:
                    break
            for future in finished:
                dataset.record(future.result())

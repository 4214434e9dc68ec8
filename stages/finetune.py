"""`pvr-pipe finetune`: learn online in the env, with the frozen PVR in the loop.

Starts from an offline run (`--run`: its world model, and for tdmpc its policy and Q-functions;
`--set` may change any setting that does not shape the weights, e.g. the learning rate or the
actor's gradient) or from nothing (`--store` and a world model: the from-scratch curve). Play goes in rounds: one
episode in each of `num_envs` parallel envs, started together with seeds derived from the seed
and the round. After every parallel step the agent trains, `train_ratio` gradient updates per
agent step, on batches mixing windows of the offline store (`offline_fraction`, the run's
training episodes) with windows of the episodes played so far. The first `seed_steps` agent steps
are random and earn no updates; then one burst of `seed_steps` x `train_ratio` updates trains on
them (TD-MPC2's schedule from nothing; 0 seed steps otherwise); updates owed while no window can be
sampled are dropped, as DreamerV3's train ratio counts only once a batch can be drawn. Every new
frame is encoded once,
by the encoder that built the store, and every finished episode is appended to a store of its
own, `<out>/online.zarr`. Before the first round and then every `eval_every` agent steps the
agent plays `eval_episodes` episodes on the training look without exploration (its own RNG, so
evaluating does not change training): the learning curve, agent steps vs return, is
`live/plots/metrics/eval/return.tsv`. A checkpoint after every `checkpoint_every` rounds holds the
agent, optimisers, RNG states and counters; a killed run resumes there, cuts the online store
back to it, and ends as an uninterrupted run would.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline import __version__
from pipeline.config import FinetuneConfig
from pipeline.encoders.store_encoder import StoreEncoder
from pipeline.envs.actions import action_dim
from pipeline.envs.store_env import env_settings, make_pool
from pipeline.errors import UserError
from pipeline.rollout import AgentActor, RandomActor, StepTimer, evaluate_agent, play_episodes, random_returns
from pipeline.storage import embedding_store
from pipeline.storage.atomic_files import write_bytes_atomic
from pipeline.storage.checkpoint import load_checkpoint, restore_states, save_agent_checkpoint
from pipeline.storage.live_metrics import open_live, read_summary
from pipeline.storage.runs import (AGENT_CHECKPOINT, CHECKPOINT, EVALUATION_DIR, FINETUNE_DIR, FINETUNE_FILE,
                                   LIVE_DIR, RUN_FILE, TIMING_DIR, left_by_a_run, path_to_record, read_yaml,
                                   recorded_path)
from pipeline.storage.writer_lock import writer_lock
from pipeline.task_settings import default_seed_steps, episode_length, task_settings, updates_owed
from world_models.registry import compile_mode, compiles, make_agent, make_world_model, with_settings, world_model_config
from world_models.replay import Replay, concat_batches, split_episodes

ONLINE_STORE = "online.zarr"
TRAIN_STREAM, EVAL_STREAM = 0, 1          # seed-sequence branches of training and evaluation episodes
# Published update rates: DreamerV3's train ratio 512 replayed steps per step at batch 16 x 64, and
# TD-MPC2's one update per step.
TRAIN_RATIO = {"dreamer": 0.5, "tdmpc": 1.0}


def episode_seeds(seed: int, stream: int, index: int, count: int) -> list[int]:
    return [int(s) for s in np.random.SeedSequence(seed, spawn_key=(stream, index)).generate_state(count)]


def sample_batch(offline: Replay | None, online: Replay, wm_cfg, offline_fraction: float,
                 rng: np.random.Generator) -> dict[str, torch.Tensor] | None:
    """A batch of windows: `offline_fraction` of them from the offline store while both have windows."""
    length, size, stack = wm_cfg.sequence_length, wm_cfg.batch_size, wm_cfg.frame_stack
    offline_ready = offline is not None and offline.has_windows(length)
    online_ready = online.has_windows(length)
    if not (offline_ready or online_ready):
        return None
    from_offline = size if not online_ready else (round(size * offline_fraction) if offline_ready else 0)
    parts = []
    if from_offline:
        parts.append(offline.sample(from_offline, length, rng, stack))
    if size - from_offline:
        parts.append(online.sample(size - from_offline, length, rng, stack))
    return concat_batches(parts)


def run(cfg: FinetuneConfig, show_progress: bool = True) -> Path:
    if cfg.run is None and cfg.store is None:
        raise UserError("nothing to start from; pass --run DIR (an offline run) or --store PATH (to start from nothing)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = _starting_point(cfg)
    arrays, episode_start, attrs, spec = start["arrays"], start["episode_start"], start["attrs"], start["spec"]
    settings = env_settings(attrs)
    max_steps = cfg.max_steps or settings["max_steps"]
    train_ratio = cfg.train_ratio if cfg.train_ratio is not None else TRAIN_RATIO[spec["world_model"]]
    seed_steps = cfg.seed_steps if cfg.seed_steps is not None else default_seed_steps(
        spec["world_model"], cfg.run is None,
        episode_length(attrs, episode_start, len(arrays["reward"]), max_steps))
    out = cfg.out or (cfg.run / FINETUNE_DIR if cfg.run else
                      Path("runs") / Path(attrs["source_dataset"]).name / attrs["encoder"] / spec["world_model"]
                      / f"seed{cfg.seed}" / "scratch")
    source = start["source"] | ({"run": path_to_record(cfg.run, out)} if cfg.run else {})
    identity = {"start": source, "world_model": spec["world_model"], "config": spec["config"],
                "seed": cfg.seed, "store_sha256": start["store_sha256"], "env": settings, "max_steps": max_steps,
                "train_ratio": train_ratio, "seed_steps": seed_steps,
                **cfg.model_dump(mode="json", include={"num_envs", "offline_fraction", "eval_every", "eval_episodes"})}
    with writer_lock(out, "finetune"):
        _check_out_dir(out, identity)
        _finetune(cfg, out, start, identity, show_progress)
    return out


def _finetune(cfg: FinetuneConfig, out: Path, start: dict[str, Any], identity: dict[str, Any],
              show_progress: bool) -> None:
    arrays, episode_start, attrs, spec = start["arrays"], start["episode_start"], start["attrs"], start["spec"]
    settings, max_steps = identity["env"], identity["max_steps"]
    train_ratio, seed_steps = identity["train_ratio"], identity["seed_steps"]
    encoder = StoreEncoder(attrs, cfg.weights, cfg.device)

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    world_model = make_world_model(spec["world_model"], spec["config"], spec["feature"], spec["feature_shape"],
                                   spec["action_dim"], spec.get("discrete_actions", False), seeds=(cfg.seed,))
    wm_cfg = world_model.cfg
    agent = make_agent(world_model).to(cfg.device).train()
    if compiles(spec["world_model"], cfg.compile, cfg.env_steps * train_ratio):
        agent.compile(compile_mode(cfg.device))
    optimizers = agent.make_optimizers()
    if start["checkpoint"] is not None:   # weights only: the optimisers start afresh, with the settings given
        world_model.load_state_dict(start["checkpoint"]["model"])
    offline = (Replay(arrays, episode_start, spec["feature"]).select_episodes(start["train_episodes"])
               if cfg.offline_fraction > 0 else None)

    checkpoint_path = out / AGENT_CHECKPOINT
    progress_state = {"env_steps": 0, "updates": 0, "rounds": 0, "episodes": 0, "online_frames": 0,
                      "update_debt": 0.0, "evaluations": 0}
    if checkpoint_path.exists():
        saved = load_checkpoint(checkpoint_path)
        agent.load_state_dict(saved["agent"])
        restore_states(saved, optimizers, rng)
        progress_state = saved["progress"]
    if progress_state["env_steps"] >= cfg.env_steps:
        print(f"{out} is already fine-tuned ({progress_state['env_steps']} agent steps)")
        return

    out.mkdir(parents=True, exist_ok=True)
    config = cfg.model_dump(mode="json", exclude={"out"}) | {
        name: path_to_record(getattr(cfg, name), out) for name in ("run", "store") if getattr(cfg, name)}
    info = {"identity": identity, "store": path_to_record(start["store"], out), "encoder": attrs["encoder"],
            "encoder_weights_sha256": attrs["weights_sha256"], "properties": attrs["properties"],
            "env": settings["env"], "variant": settings["variant"], "finetune_config": config,
            "pipeline_version": __version__}
    eval_seeds = episode_seeds(cfg.seed, EVAL_STREAM, 0, cfg.eval_episodes)
    info["random_return"] = read_yaml(out / FINETUNE_FILE).get("random_return") or float(
        np.mean(random_returns(settings, settings["variant"], eval_seeds, max_steps)))
    write_bytes_atomic(out / FINETUNE_FILE, yaml.safe_dump(info, sort_keys=False).encode())

    online_store = _open_online_store(out / ONLINE_STORE, attrs, spec, arrays["state"].shape[1], progress_state,
                                      identity)
    online_arrays, online_starts, _ = embedding_store.read_store(str(out / ONLINE_STORE))
    online = Replay(online_arrays, online_starts, spec["feature"])
    resume_from = progress_state["env_steps"] if progress_state["rounds"] else 0
    live = open_live(out / LIVE_DIR, resume_from=resume_from)
    timing = open_live(out / TIMING_DIR, resume_from=resume_from)
    timed = read_summary(out / TIMING_DIR) if resume_from else {}
    timer = StepTimer(timed.get("seconds"))
    # The steps the timer's seconds cover start here: a resumed run whose timing/ is gone (DVC does not
    # track it, so a pull leaves it out) counts its seconds afresh from where it resumed.
    timed_from = int(timed.get("timed_from_step", 0)) if timed else resume_from
    spec_out = {**spec, "preset": start["preset"]}

    with make_pool(settings, settings["variant"], cfg.num_envs, step_frames=encoder.reads == "image") as pool, \
            Progress(TextColumn(f"finetune {spec['world_model']} on {attrs['encoder']}"), BarColumn(),
                     MofNCompleteColumn(), TextColumn("agent steps {task.fields[status]}"), TimeRemainingColumn(),
                     disable=not show_progress) as bar:
        if action_dim(pool.action_space) != spec["action_dim"]:
            raise UserError(f"{settings['env']} has {action_dim(pool.action_space)}-d actions but the run's "
                            f"world model takes {spec['action_dim']}-d ones")
        task = bar.add_task("finetune", total=cfg.env_steps, completed=progress_state["env_steps"], status="")
        losses: dict[str, list[float]] = defaultdict(list)

        def evaluate() -> None:
            with timer("evaluation"):
                played = evaluate_agent(agent, pool, encoder, eval_seeds, max_steps, cfg.device, cfg.seed)
            returns = [episode.total_return for episode in played]
            live.step = progress_state["env_steps"]
            live.log_metric("eval/return", float(np.mean(returns)))
            live.log_metric("eval/return_std", float(np.std(returns)))
            live.log_metric("eval/random_return", info["random_return"])
            progress_state["evaluations"] += 1
            bar.update(task, status=f"eval return {np.mean(returns):.1f} (random {info['random_return']:.1f})")

        def train_after(steps: int) -> None:
            before = progress_state["env_steps"]
            progress_state["env_steps"] += steps
            bar.advance(task, steps)
            progress_state["update_debt"] += updates_owed(before, progress_state["env_steps"], seed_steps, train_ratio)
            while progress_state["update_debt"] >= 1.0:
                batch = sample_batch(offline, online, wm_cfg, cfg.offline_fraction, rng)
                if batch is None:   # as DreamerV3, the ratio counts from when a batch can be drawn
                    progress_state["update_debt"] = 0.0
                    return
                with timer("learner"):
                    metrics = agent.train_step({k: v.to(cfg.device) for k, v in batch.items()}, optimizers)
                for key, value in metrics.items():
                    losses[key].append(value)
                progress_state["updates"] += 1
                progress_state["update_debt"] -= 1.0

        if progress_state["evaluations"] == 0:
            evaluate()
        while progress_state["env_steps"] < cfg.env_steps:
            round_index = progress_state["rounds"]
            seeds = episode_seeds(cfg.seed, TRAIN_STREAM, round_index, cfg.num_envs)
            seeding = progress_state["env_steps"] < seed_steps
            actor = RandomActor(pool.action_space, rng) if seeding else AgentActor(agent, cfg.device, explore=True)
            wall = time.perf_counter()
            played = play_episodes(pool, encoder, actor, seeds, max_steps, after_step=train_after, timer=timer)
            timer.seconds["round"] += time.perf_counter() - wall
            for episode in played:
                embedding_store.append_episode(online_store, episode.arrays)
                online.append_episode(episode.arrays)
                progress_state["episodes"] += 1
                progress_state["online_frames"] += len(episode.arrays["reward"])
            progress_state["rounds"] += 1
            live.step = progress_state["env_steps"]
            live.log_metric("train/episode_return", float(np.mean([e.total_return for e in played])))
            live.log_metric("train/updates", progress_state["updates"])
            for key, values in losses.items():
                live.log_metric(f"train/{key}", float(np.mean(values)))
            losses.clear()
            timing.step = progress_state["env_steps"]
            for part, share in time_shares(timer.seconds).items():
                timing.log_metric(f"{part}_share", share)
            timing.log_metric("agent_steps_per_s",
                              (progress_state["env_steps"] - timed_from) / max(timer.seconds["round"], 1e-9))
            timing.log_metric("timed_from_step", timed_from, plot=False)
            for part, seconds in timer.seconds.items():
                timing.log_metric(f"seconds/{part}", seconds, plot=False)
            timing.make_summary()
            evaluations_due = progress_state["env_steps"] // cfg.eval_every + 1
            done = progress_state["env_steps"] >= cfg.env_steps
            if progress_state["evaluations"] < evaluations_due or done:
                evaluate()
            live.make_summary()
            if progress_state["rounds"] % cfg.checkpoint_every == 0 or done:
                save_agent_checkpoint(checkpoint_path, agent=agent, optimizers=optimizers, rng=rng,
                                      spec=spec_out, progress=progress_state, store_attrs=attrs)


def time_shares(seconds: dict[str, float]) -> dict[str, float]:
    """Share of the playing time (evaluation excluded) spent in each part of the loop."""
    total = seconds.get("round", 0.0)
    if total <= 0:
        return {}
    parts = {part: seconds.get(part, 0.0) / total for part in ("simulator", "encoder", "agent", "learner")}
    return parts | {"other": max(0.0, 1.0 - sum(parts.values()))}


def _starting_point(cfg: FinetuneConfig) -> dict[str, Any]:
    """The store, world-model spec and weights a fine-tune starts from."""
    if cfg.run is not None:
        run_file = cfg.run / RUN_FILE
        if not run_file.is_file():
            raise UserError(f"'{cfg.run}' is not a training run (no {RUN_FILE}); make one with `pvr-pipe train`")
        run_info = read_yaml(run_file)
        checkpoint = load_checkpoint(cfg.run / CHECKPOINT)
        store = recorded_path(run_info["store"], cfg.run)
        _refuse_contradictions(cfg, {"world_model": run_info["identity"]["world_model"],
                                     "preset": run_info["identity"]["preset"]})
        arrays, episode_start, attrs = embedding_store.read_store(store)
        store_sha = embedding_store.arrays_sha256(arrays)
        if store_sha != run_info["identity"]["store_sha256"]:
            raise UserError(f"the run's store '{store}' changed since training; retrain the run")
        spec = checkpoint["spec"]
        if cfg.settings:
            spec = {**spec, "config": with_settings(spec["world_model"], spec["config"], cfg.settings)}
        return {"arrays": arrays, "episode_start": episode_start, "attrs": attrs, "store": store,
                "store_sha256": store_sha, "spec": spec, "preset": run_info["identity"]["preset"],
                "checkpoint": checkpoint, "train_episodes": run_info["identity"]["train_episodes"],
                "source": {"update": int(checkpoint["update"])}}
    store = cfg.store.rstrip("/")
    arrays, episode_start, attrs = embedding_store.read_store(store)
    feature = attrs["feature"]
    settings = task_settings(cfg.world_model, attrs, episode_start, arrays["is_terminal"], cfg.max_steps) \
        | dict(cfg.settings)
    wm_cfg = world_model_config(cfg.world_model, cfg.preset, settings)
    spec = {"world_model": cfg.world_model, "config": wm_cfg.as_dict(), "feature": feature,
            "feature_shape": list(arrays[feature].shape[1:]), "action_dim": int(arrays["action"].shape[1]),
            "discrete_actions": attrs.get("action_space") == "discrete"}
    train_episodes, _ = split_episodes(len(episode_start), 0.2) if len(episode_start) > 1 else ([0], [])
    return {"arrays": arrays, "episode_start": episode_start, "attrs": attrs, "store": store,
            "store_sha256": embedding_store.arrays_sha256(arrays), "spec": spec, "preset": cfg.preset,
            "checkpoint": None, "train_episodes": train_episodes, "source": {"scratch": True, "preset": cfg.preset}}


def _refuse_contradictions(cfg: FinetuneConfig, run: dict[str, str]) -> None:
    """Options given with --run that name another world model or preset than the run's."""
    for key, value in run.items():
        given = getattr(cfg, key)
        if key in cfg.model_fields_set and given != value:
            raise UserError(f"--{key.replace('_', '-')} {given} contradicts the run '{cfg.run}' ({key} {value}); "
                            f"leave it out to continue the run, or start from --store without --run")


def _check_out_dir(out: Path, identity: dict) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output '{out}' exists and is a file; choose another --out")
    info = read_yaml(out / FINETUNE_FILE)
    if not info:
        if out.exists() and not all(left_by_a_run(p, (EVALUATION_DIR,)) for p in out.iterdir()):
            raise UserError(f"output '{out}' holds files that are not a pvr-pipe fine-tune; choose another --out")
        return
    existing = info.get("identity", {})
    if existing != identity:
        changed = ", ".join(k for k in identity if existing.get(k) != identity[k])
        raise UserError(f"'{out}' holds a fine-tune with a different {changed}; choose another --out or remove it first")


def _open_online_store(path: Path, attrs: dict, spec: dict, state_dim: int, progress_state: dict, identity: dict):
    """The store of the episodes played so far, cut back to what the checkpoint counted."""
    if (path / "zarr.json").exists():
        group = embedding_store.open_store(str(path), mode="r+")
        embedding_store.truncate_store(group, progress_state["online_frames"], progress_state["episodes"])
        return group
    feature = spec["feature"]
    layout = embedding_store.step_array_layout(spec["action_dim"], state_dim)
    online_attrs = {key: value for key, value in attrs.items()
                    if key not in ("format", "format_version", "feature", "array_sha256")}   # it grows: no hashes
    online_attrs["online"] = identity   # its own source_dataset: the dataset whose task it goes on with
    return embedding_store.create_store(
        str(path), frames=0, feature=feature, feature_shape=tuple(spec["feature_shape"]),
        feature_dtype="uint8" if feature == "pixels" else attrs["dtype"], step_layout=layout,
        episode_start=np.zeros(0, np.int64), chunk_frames=1024, attrs=online_attrs)


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

Several seeds (`--seed 0 --seed 1 ...`, `{seed}` in `--out` and, to start each from its own offline
run, in `--run`) each get their own directory, with the bytes of the seed fine-tuned alone.
tdmpc's seeds learn as one batched model in lockstep: each seed's envs are one block of the
pool, encoded apart; each draws its random actions, batches and planning noise from its own
generators; one planning call and one update serve them all. Lockstep needs episodes of equal
length, so seeds of envs with true terminals learn one after another, as dreamer's seeds do and
seeds that differ in anything but the seed (store, settings, the step a resumed run stands at).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
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
from pipeline.rollout import (AgentActor, BlockActor, RandomActor, StepTimer, evaluate_agent, play_episodes,
                              random_returns)
from pipeline.storage import embedding_store
from pipeline.storage.atomic_files import write_bytes_atomic
from pipeline.storage.checkpoint import load_checkpoint, restore_seed_states, save_agent_checkpoint, seed_states
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


@dataclass
class SeedFinetune:
    """One seed's part of a fine-tune: its config, directory, starting point, and all it keeps apart."""
    cfg: FinetuneConfig              # `seed`, `run` and `out` are this seed's
    out: Path
    start: dict[str, Any]
    identity: dict[str, Any]
    rng: np.random.Generator
    saved: dict[str, Any] | None = None      # its agent checkpoint, when it resumes
    progress: dict[str, Any] = field(default_factory=lambda: {
        "env_steps": 0, "updates": 0, "rounds": 0, "episodes": 0, "online_frames": 0, "update_debt": 0.0,
        "evaluations": 0})
    info: dict[str, Any] = field(default_factory=dict)
    eval_seeds: list[int] = field(default_factory=list)
    online: Replay | None = None
    online_store: Any = None
    live: Any = None
    timing: Any = None
    losses: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def seed(self) -> int:
        return self.cfg.seed


def run(cfg: FinetuneConfig, show_progress: bool = True) -> list[Path]:
    """Fine-tune every seed of `cfg`; returns their directories, in the order of the seeds."""
    if cfg.run is None and cfg.store is None:
        raise UserError("nothing to start from; pass --run DIR (an offline run) or --store PATH (to start from nothing)")
    seeds = cfg.seeds
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seed {' '.join(map(str, seeds))} names a seed twice; give each seed once")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    runs = [_seed_finetune(cfg, seed) for seed in seeds]
    outs = [seed_run.out for seed_run in runs]
    if len(set(outs)) != len(outs):
        raise UserError(f"the {len(seeds)} seeds would share the directory '{outs[0]}'; put {{seed}} in --out, "
                        f"e.g. --out {outs[0]}/seed{{seed}}")
    with ExitStack() as locks:
        for seed_run in runs:
            locks.enter_context(writer_lock(seed_run.out, "finetune"))
            _check_out_dir(seed_run.out, seed_run.identity)
            path = seed_run.out / AGENT_CHECKPOINT
            if path.exists():
                seed_run.saved = load_checkpoint(path)
                seed_run.progress = seed_run.saved["progress"]
        for group in _groups(runs):
            _finetune(cfg, group, show_progress)
    return outs


def _seed_finetune(cfg: FinetuneConfig, seed: int) -> SeedFinetune:
    """Seed `seed`'s config (`{seed}` in --run and --out filled in), starting point and identity."""
    paths = {name: Path(str(getattr(cfg, name)).replace("{seed}", str(seed)))
             for name in ("run", "out") if getattr(cfg, name) is not None}
    cfg = cfg.model_copy(update={"seed": seed, **paths})
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
                      / f"seed{seed}" / "scratch")
    source = start["source"] | ({"run": path_to_record(cfg.run, out)} if cfg.run else {})
    identity = {"start": source, "world_model": spec["world_model"], "config": spec["config"],
                "seed": seed, "store_sha256": start["store_sha256"], "env": settings, "max_steps": max_steps,
                "train_ratio": train_ratio, "seed_steps": seed_steps,
                **cfg.model_dump(mode="json", include={"num_envs", "offline_fraction", "eval_every", "eval_episodes"})}
    return SeedFinetune(cfg, out, start, identity, np.random.default_rng(seed))


def _groups(runs: list[SeedFinetune]) -> list[list[SeedFinetune]]:
    """The seeds that learn as one model in lockstep: tdmpc's whose episodes all run to the time
    limit and that share everything but the seed (store, settings, offline episodes, the step a
    resumed run stands at). Every other seed learns alone."""
    groups: dict[Any, list[SeedFinetune]] = defaultdict(list)
    for seed_run in runs:
        spec = seed_run.start["spec"]
        if spec["world_model"] != "tdmpc" or spec["config"].get("episodic"):
            key: Any = ("alone", seed_run.seed)
        else:
            shared = {k: v for k, v in seed_run.identity.items() if k not in ("seed", "start")}
            key = json.dumps([shared, seed_run.start["train_episodes"], seed_run.progress], sort_keys=True)
        groups[key].append(seed_run)
    return list(groups.values())


def _finetune(cfg: FinetuneConfig, group: list[SeedFinetune], show_progress: bool) -> None:
    lead, count = group[0], len(group)
    start, identity = lead.start, lead.identity
    arrays, episode_start, attrs, spec = start["arrays"], start["episode_start"], start["attrs"], start["spec"]
    settings, max_steps = identity["env"], identity["max_steps"]
    train_ratio, seed_steps = identity["train_ratio"], identity["seed_steps"]
    if lead.progress["env_steps"] >= cfg.env_steps:
        for seed_run in group:
            print(f"{seed_run.out} is already fine-tuned ({seed_run.progress['env_steps']} agent steps)")
        return
    encoder = StoreEncoder(attrs, cfg.weights, cfg.device)

    torch.manual_seed(lead.seed)
    world_model = make_world_model(spec["world_model"], spec["config"], spec["feature"], spec["feature_shape"],
                                   spec["action_dim"], spec.get("discrete_actions", False),
                                   seeds=tuple(seed_run.seed for seed_run in group))
    wm_cfg = world_model.cfg
    agent = make_agent(world_model).to(cfg.device).train()
    if compiles(spec["world_model"], cfg.compile, cfg.env_steps * train_ratio):
        agent.compile(compile_mode(cfg.device))
    optimizers = agent.make_optimizers()
    if start["checkpoint"] is not None:   # weights only: the optimisers start afresh, with the settings given
        weights = [seed_run.start["checkpoint"]["model"] for seed_run in group]
        world_model.load_state_dict(weights[0]) if count == 1 else world_model.load_seed_states(weights)
    if lead.saved is not None:
        restore_seed_states(agent, optimizers, [r.saved for r in group], [r.rng for r in group], "agent")
    offline = (Replay(arrays, episode_start, spec["feature"]).select_episodes(start["train_episodes"])
               if cfg.offline_fraction > 0 else None)   # the seeds of a group share their store and episodes
    for seed_run in group:
        _open_seed(seed_run, spec, max_steps)
    resume_from = lead.progress["env_steps"] if lead.progress["rounds"] else 0
    timed = read_summary(lead.out / TIMING_DIR) if resume_from else {}
    timer = StepTimer(timed.get("seconds"))
    # The steps the timer's seconds cover start here: a resumed run whose timing/ is gone (DVC does not
    # track it, so a pull leaves it out) counts its seconds afresh from where it resumed.
    timed_from = int(timed.get("timed_from_step", 0)) if timed else resume_from
    spec_out = {**spec, "preset": start["preset"]}
    seeds_shown = f", seed{'s' * (count > 1)} {' '.join(str(r.seed) for r in group)}"

    with make_pool(settings, settings["variant"], cfg.num_envs * count, step_frames=encoder.reads == "image") as pool, \
            Progress(TextColumn(f"finetune {spec['world_model']} on {attrs['encoder']}{seeds_shown}"), BarColumn(),
                     MofNCompleteColumn(), TextColumn("agent steps {task.fields[status]}"), TimeRemainingColumn(),
                     disable=not show_progress) as bar:
        if action_dim(pool.action_space) != spec["action_dim"]:
            raise UserError(f"{settings['env']} has {action_dim(pool.action_space)}-d actions but the run's "
                            f"world model takes {spec['action_dim']}-d ones")
        task = bar.add_task("finetune", total=cfg.env_steps, completed=lead.progress["env_steps"], status="")

        def evaluate() -> None:
            with timer("evaluation"):
                played = evaluate_agent(agent, pool, encoder, [r.eval_seeds for r in group], max_steps, cfg.device,
                                        tuple(r.seed for r in group))
            means = []
            for seed_run, episodes in zip(group, played):
                returns = [episode.total_return for episode in episodes]
                seed_run.live.step = seed_run.progress["env_steps"]
                seed_run.live.log_metric("eval/return", float(np.mean(returns)))
                seed_run.live.log_metric("eval/return_std", float(np.std(returns)))
                seed_run.live.log_metric("eval/random_return", seed_run.info["random_return"])
                seed_run.progress["evaluations"] += 1
                means.append(np.mean(returns))
            bar.update(task, status=f"eval return {np.mean(means):.1f} (random {lead.info['random_return']:.1f})")

        def train_after(stepped: list[int]) -> None:
            steps = [sum(1 for i in stepped if i // cfg.num_envs == k) for k in range(count)]
            if len(set(steps)) > 1:
                raise RuntimeError(f"the seeds of a batched fine-tune fell out of step ({steps} envs stepped)")
            before = lead.progress["env_steps"]
            owed = updates_owed(before, before + steps[0], seed_steps, train_ratio)
            for seed_run in group:
                seed_run.progress["env_steps"] += steps[0]
                seed_run.progress["update_debt"] += owed
            bar.advance(task, steps[0])
            while lead.progress["update_debt"] >= 1.0:
                batches = [sample_batch(offline, r.online, wm_cfg, cfg.offline_fraction, r.rng) for r in group]
                if any(batch is None for batch in batches):   # as DreamerV3, the ratio counts from when a batch can be drawn
                    for seed_run in group:
                        seed_run.progress["update_debt"] = 0.0
                    return
                with timer("learner"):
                    if count == 1:
                        metrics = [agent.train_step({k: v.to(cfg.device) for k, v in batches[0].items()}, optimizers)]
                    else:
                        metrics = agent.update({k: torch.stack([b[k] for b in batches]).to(cfg.device)
                                                for k in batches[0]}, optimizers)
                for seed_run, seed_metrics in zip(group, metrics):
                    for key, value in seed_metrics.items():
                        seed_run.losses[key].append(value)
                    seed_run.progress["updates"] += 1
                    seed_run.progress["update_debt"] -= 1.0

        if lead.progress["evaluations"] == 0:
            evaluate()
        while lead.progress["env_steps"] < cfg.env_steps:
            round_index = lead.progress["rounds"]
            seeds = [s for r in group for s in episode_seeds(r.seed, TRAIN_STREAM, round_index, cfg.num_envs)]
            seeding = lead.progress["env_steps"] < seed_steps
            actor = (BlockActor([RandomActor(pool.action_space, r.rng) for r in group]) if seeding else
                     AgentActor(agent, cfg.device, explore=True))
            wall = time.perf_counter()
            played = play_episodes(pool, encoder, actor, seeds, max_steps, after_step=train_after, timer=timer,
                                   blocks=count)
            timer.seconds["round"] += time.perf_counter() - wall
            for k, seed_run in enumerate(group):
                _record_round(seed_run, played[k * cfg.num_envs:(k + 1) * cfg.num_envs], timer, timed_from)
            evaluations_due = lead.progress["env_steps"] // cfg.eval_every + 1
            done = lead.progress["env_steps"] >= cfg.env_steps
            if lead.progress["evaluations"] < evaluations_due or done:
                evaluate()
            for seed_run in group:
                seed_run.live.make_summary()
            if lead.progress["rounds"] % cfg.checkpoint_every == 0 or done:
                for k, seed_run in enumerate(group):
                    agent_state, optimizer_states, torch_rng = seed_states(agent, optimizers, k, count)
                    save_agent_checkpoint(seed_run.out / AGENT_CHECKPOINT, agent_state=agent_state,
                                          optimizer_states=optimizer_states, rng=seed_run.rng, torch_rng=torch_rng,
                                          spec=spec_out, progress=seed_run.progress, store_attrs=attrs)


def _open_seed(seed_run: SeedFinetune, spec: dict[str, Any], max_steps: int) -> None:
    """A seed's directory: its record, evaluation seeds and random floor, online store and logs."""
    cfg, out, start = seed_run.cfg, seed_run.out, seed_run.start
    attrs, settings = start["attrs"], seed_run.identity["env"]
    out.mkdir(parents=True, exist_ok=True)
    config = cfg.model_dump(mode="json", exclude={"out"}) | {
        name: path_to_record(getattr(cfg, name), out) for name in ("run", "store") if getattr(cfg, name)}
    seed_run.info = {"identity": seed_run.identity, "store": path_to_record(start["store"], out),
                     "encoder": attrs["encoder"], "encoder_weights_sha256": attrs["weights_sha256"],
                     "properties": attrs["properties"], "env": settings["env"], "variant": settings["variant"],
                     "finetune_config": config, "pipeline_version": __version__}
    seed_run.eval_seeds = episode_seeds(seed_run.seed, EVAL_STREAM, 0, cfg.eval_episodes)
    seed_run.info["random_return"] = read_yaml(out / FINETUNE_FILE).get("random_return") or float(
        np.mean(random_returns(settings, settings["variant"], seed_run.eval_seeds, max_steps)))
    write_bytes_atomic(out / FINETUNE_FILE, yaml.safe_dump(seed_run.info, sort_keys=False).encode())

    seed_run.online_store = _open_online_store(out / ONLINE_STORE, attrs, spec, start["arrays"]["state"].shape[1],
                                               seed_run.progress, seed_run.identity)
    online_arrays, online_starts, _ = embedding_store.read_store(str(out / ONLINE_STORE))
    seed_run.online = Replay(online_arrays, online_starts, spec["feature"])
    resume_from = seed_run.progress["env_steps"] if seed_run.progress["rounds"] else 0
    seed_run.live = open_live(out / LIVE_DIR, resume_from=resume_from)
    seed_run.timing = open_live(out / TIMING_DIR, resume_from=resume_from)


def _record_round(seed_run: SeedFinetune, played: list, timer: StepTimer, timed_from: int) -> None:
    """A seed's episodes of the round into its online store and replay, and the round's metrics."""
    progress, live, timing = seed_run.progress, seed_run.live, seed_run.timing
    for episode in played:
        embedding_store.append_episode(seed_run.online_store, episode.arrays)
        seed_run.online.append_episode(episode.arrays)
        progress["episodes"] += 1
        progress["online_frames"] += len(episode.arrays["reward"])
    progress["rounds"] += 1
    live.step = progress["env_steps"]
    live.log_metric("train/episode_return", float(np.mean([e.total_return for e in played])))
    live.log_metric("train/updates", progress["updates"])
    for key, values in seed_run.losses.items():
        live.log_metric(f"train/{key}", float(np.mean(values)))
    seed_run.losses.clear()
    timing.step = progress["env_steps"]
    for part, share in time_shares(timer.seconds).items():
        timing.log_metric(f"{part}_share", share)
    timing.log_metric("agent_steps_per_s", (progress["env_steps"] - timed_from) / max(timer.seconds["round"], 1e-9))
    timing.log_metric("timed_from_step", timed_from, plot=False)
    for part, seconds in timer.seconds.items():
        timing.log_metric(f"seconds/{part}", seconds, plot=False)
    timing.make_summary()


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


"""`pvr-pipe train`: fit a world model offline on the cached embeddings of one store.

A run directory holds `run.yaml` (resolved config, seeds, held-out episodes, input hashes, code
version; the store's path relative to the run), `checkpoint.safetensors` (rewritten atomically
every `checkpoint_every` updates and at the end), `live/` (dvclive: `metrics.json`, and per-metric
TSVs under `plots/metrics/train/`) and `timing/` (updates per second, outside what DVC hashes).
Losses are logged as means over windows of `log_every` updates. A killed run continues from its
last checkpoint with the same RNG states and the sums of the window in progress, so it ends with
the same bytes as an uninterrupted one.

Several seeds (`--seed 0 --seed 1 ...`) of tdmpc train as one batched model (one copy of every
weight per seed, `world_models/layers.py`) in lockstep; each seed still writes its own run
directory, and its bytes are those of the seed trained alone. Seeds whose checkpoints stand at
different update counts train as separate groups; dreamer trains its seeds one after another.
"""

from __future__ import annotations

import sys
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
from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.storage.atomic_files import write_bytes_atomic
from pipeline.storage.checkpoint import load_checkpoint, restore_seed_states, save_checkpoint, seed_states
from pipeline.storage.embedding_store import arrays_sha256, read_store
from pipeline.storage.live_metrics import open_live
from pipeline.storage.runs import (CHECKPOINT, FINETUNE_DIR, LIVE_DIR, QUALITY_DIR, RUN_FILE, TIMING_DIR,
                                   left_by_a_run, path_to_record)
from pipeline.storage.writer_lock import writer_lock
from pipeline.task_settings import task_settings
from world_models.registry import compile_mode, compiles, make_world_model, world_model_config
from world_models.replay import Replay, split_episodes


def default_out(cfg: TrainConfig, attrs: dict) -> Path:
    dataset = Path(str(attrs["source_dataset"]).rstrip("/")).name
    return Path("runs") / dataset / attrs["encoder"] / cfg.world_model / f"seed{cfg.seed}"


@dataclass
class SeedRun:
    """One seed's part of a training run: its config, directory, batch sampler and log window."""
    cfg: TrainConfig                 # `seed` is this seed
    out: Path
    identity: dict
    rng: np.random.Generator
    checkpoint: dict | None = None
    live: Any = None
    timing: Any = None
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    count: int = 0

    @property
    def start(self) -> int:
        return int(self.checkpoint["update"]) if self.checkpoint else 0


def run(cfg: TrainConfig, show_progress: bool = True) -> list[Path]:
    """Train every seed of `cfg`; returns their run directories, in the order of the seeds."""
    if cfg.store is None:
        raise UserError("no store; pass --store PATH (a Zarr store made by `pvr-pipe encode`)")
    seeds = cfg.seeds
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seed {' '.join(map(str, seeds))} names a seed twice; give each seed once")
    if cfg.out is not None and len(seeds) > 1 and "{seed}" not in str(cfg.out):
        raise UserError(f"--out '{cfg.out}' is one directory for {len(seeds)} seeds; put {{seed}} in it, "
                        f"e.g. --out {cfg.out}/seed{{seed}}")
    store = cfg.store.rstrip("/")
    arrays, episode_start, attrs = read_store(store)
    feature = attrs["feature"]
    settings = task_settings(cfg.world_model, attrs, episode_start, arrays["is_terminal"]) | dict(cfg.settings)
    wm_config = world_model_config(cfg.world_model, cfg.preset, settings)
    train_ids, validation_ids = split_episodes(len(episode_start), cfg.validation_fraction)
    spec = {"world_model": cfg.world_model, "config": wm_config.as_dict(), "feature": feature,
            "feature_shape": list(arrays[feature].shape[1:]), "action_dim": int(arrays["action"].shape[1]),
            "discrete_actions": attrs.get("action_space") == "discrete"}
    store_sha256 = arrays_sha256(arrays)
    runs = []
    for seed in seeds:
        seed_cfg = cfg.model_copy(update={"seed": seed, "out": None if cfg.out is None else
                                          Path(str(cfg.out).replace("{seed}", str(seed)))})
        # What the trained weights depend on; a run directory never mixes two of these.
        identity = {"world_model": cfg.world_model, "preset": cfg.preset, "config": spec["config"], "seed": seed,
                    "store_sha256": store_sha256, "train_episodes": train_ids, "validation_episodes": validation_ids}
        runs.append(SeedRun(seed_cfg, seed_cfg.out or default_out(seed_cfg, attrs), identity,
                            np.random.default_rng(seed)))

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    replay = Replay(arrays, episode_start, feature).select_episodes(train_ids)
    replay.window_starts(wm_config.sequence_length)   # fails early if episodes are too short
    with ExitStack() as locks:
        for seed_run in runs:
            locks.enter_context(writer_lock(seed_run.out, "train"))
            _check_run_dir(seed_run.out, seed_run.identity)
            path = seed_run.out / CHECKPOINT
            seed_run.checkpoint = load_checkpoint(path) if path.exists() else None
        for group in _groups(cfg.world_model, runs):
            _train(cfg, wm_config, group, replay, spec, store, attrs, show_progress)
    return [seed_run.out for seed_run in runs]


def _groups(world_model: str, runs: list[SeedRun]) -> list[list[SeedRun]]:
    """The seeds that train as one model: tdmpc's that stand at the same update, dreamer's one by one."""
    if world_model != "tdmpc":
        return [[seed_run] for seed_run in runs]
    by_start: dict[int, list[SeedRun]] = defaultdict(list)
    for seed_run in runs:
        by_start[seed_run.start].append(seed_run)
    return list(by_start.values())


def _train(cfg: TrainConfig, wm_config, runs: list[SeedRun], replay: Replay, spec: dict, store: str, attrs: dict,
           show_progress: bool) -> None:
    start = runs[0].start
    if start >= cfg.updates:
        for seed_run in runs:
            print(f"{seed_run.out} is already trained ({start} updates)", file=sys.stderr)
        return
    torch.manual_seed(runs[0].cfg.seed)     # dreamer initialises from torch's generator; tdmpc from its seeds'
    model = make_world_model(cfg.world_model, wm_config, spec["feature"], spec["feature_shape"], spec["action_dim"],
                             spec["discrete_actions"], seeds=tuple(r.cfg.seed for r in runs))
    model = model.to(cfg.device).train()
    if compiles(cfg.world_model, cfg.compile, cfg.updates):
        model.compile(compile_mode(cfg.device))
    optimizers = model.make_optimizers()
    if start:
        restore_seed_states(model, optimizers, [r.checkpoint for r in runs], [r.rng for r in runs], "model")
    for seed_run in runs:
        seed_run.out.mkdir(parents=True, exist_ok=True)
        run_info = {"identity": seed_run.identity, "store": path_to_record(store, seed_run.out),
                    "encoder": attrs["encoder"], "encoder_weights_sha256": attrs["weights_sha256"], "env": attrs["env"],
                    "variant": attrs["variant"], "source_dataset": attrs["source_dataset"],
                    "properties": attrs["properties"],
                    "train_config": seed_run.cfg.model_dump(mode="json", exclude={"out"})
                    | {"store": path_to_record(store, seed_run.out)},
                    "pipeline_version": __version__}
        write_bytes_atomic(seed_run.out / RUN_FILE, yaml.safe_dump(run_info, sort_keys=False).encode())
        seed_run.live = open_live(seed_run.out / LIVE_DIR, resume_from=start)
        seed_run.timing = open_live(seed_run.out / TIMING_DIR, resume_from=start)
        window = seed_run.checkpoint["log_window"] if seed_run.checkpoint else {"sums": {}, "count": 0}
        seed_run.sums.update(window["sums"])
        seed_run.count = window["count"]

    timed, window_start = 0, time.perf_counter()
    seeds = " ".join(str(r.cfg.seed) for r in runs)
    columns = (TextColumn(f"train {cfg.world_model} on {attrs['encoder']}, seed{'s' * (len(runs) > 1)} {seeds}"),
               BarColumn(), MofNCompleteColumn(), TextColumn("updates {task.fields[loss]}"), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        bar = progress.add_task("train", total=cfg.updates, completed=start, loss="")
        for update in range(start + 1, cfg.updates + 1):
            batches = [replay.sample(wm_config.batch_size, wm_config.sequence_length, r.rng, wm_config.frame_stack)
                       for r in runs]
            if len(runs) == 1:
                metrics = [model.train_step({k: v.to(cfg.device) for k, v in batches[0].items()}, optimizers)]
            else:
                metrics = model.update({k: torch.stack([b[k] for b in batches]).to(cfg.device) for k in batches[0]},
                                       optimizers)
            for seed_run, seed_metrics in zip(runs, metrics):
                for key, value in seed_metrics.items():
                    seed_run.sums[key] += value
                seed_run.count += 1
            timed += 1
            progress.advance(bar)
            if update % cfg.log_every == 0 or update == cfg.updates:
                rate = timed / (time.perf_counter() - window_start)
                for seed_run in runs:
                    _log_window(seed_run, update, rate)
                progress.update(bar, loss=f"loss {np.mean([r.sums['loss'] / r.count for r in runs]):.3f}")
                for seed_run in runs:
                    seed_run.sums.clear()
                    seed_run.count = 0
                timed, window_start = 0, time.perf_counter()
            if update % cfg.checkpoint_every == 0 or update == cfg.updates:
                for k, seed_run in enumerate(runs):
                    model_state, optimizer_states, torch_rng = seed_states(model, optimizers, k, len(runs))
                    save_checkpoint(seed_run.out / CHECKPOINT, model_state=model_state,
                                    optimizer_states=optimizer_states, update=update, rng=seed_run.rng,
                                    torch_rng=torch_rng, spec=spec,
                                    log_window={"sums": dict(seed_run.sums), "count": seed_run.count})


def _log_window(seed_run: SeedRun, update: int, updates_per_s: float) -> None:
    seed_run.live.step = seed_run.timing.step = update
    for key, value in seed_run.sums.items():
        seed_run.live.log_metric(f"train/{key}", value / seed_run.count)
    seed_run.live.make_summary()
    seed_run.timing.log_metric("updates_per_s", updates_per_s)
    seed_run.timing.make_summary()


def _check_run_dir(out: Path, identity: dict) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output '{out}' exists and is a file; choose another --out")
    run_file = out / RUN_FILE
    if not run_file.exists():
        if out.exists() and not all(left_by_a_run(p, (QUALITY_DIR, FINETUNE_DIR)) for p in out.iterdir()):
            raise UserError(f"output '{out}' holds files that are not a pvr-pipe run; choose another --out")
        return
    existing = (yaml.safe_load(run_file.read_text()) or {}).get("identity", {})
    if existing != identity:
        changed = ", ".join(k for k in identity if existing.get(k) != identity[k])
        raise UserError(f"'{out}' holds a run with a different {changed}; choose another --out or remove it first")

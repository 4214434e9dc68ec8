"""`pvr-pipe train`: fit a world model offline on the cached embeddings of one store.

A run directory holds `run.yaml` (resolved config, seeds, held-out episodes, input hashes, code
version; the store's path relative to the run), `checkpoint.safetensors` (rewritten atomically
every `checkpoint_every` updates and at the end), `live/` (dvclive: `metrics.json`, and per-metric
TSVs under `plots/metrics/train/`) and `timing/` (updates per second, outside what DVC hashes).
Losses are logged as means over windows of `log_every` updates. A killed run continues from its
last checkpoint with the same RNG states and the sums of the window in progress, so it ends with
the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline import __version__
from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.storage.atomic_files import write_bytes_atomic
from pipeline.storage.checkpoint import load_checkpoint, restore_training, save_checkpoint
from pipeline.storage.embedding_store import arrays_sha256, read_store
from pipeline.storage.live_metrics import open_live
from pipeline.storage.runs import (CHECKPOINT, FINETUNE_DIR, LIVE_DIR, QUALITY_DIR, RUN_FILE, TIMING_DIR,
                                   left_by_a_run, path_to_record)
from pipeline.storage.writer_lock import writer_lock
from pipeline.task_settings import task_settings
from world_models.registry import compile_mode, make_world_model, world_model_config
from world_models.replay import Replay, split_episodes


def default_out(cfg: TrainConfig, attrs: dict) -> Path:
    dataset = Path(str(attrs["source_dataset"]).rstrip("/")).name
    return Path("runs") / dataset / attrs["encoder"] / cfg.world_model / f"seed{cfg.seed}"


def run(cfg: TrainConfig, show_progress: bool = True) -> Path:
    if cfg.store is None:
        raise UserError("no store; pass --store PATH (a Zarr store made by `pvr-pipe encode`)")
    store = cfg.store.rstrip("/")
    arrays, episode_start, attrs = read_store(store)
    feature = attrs["feature"]
    settings = task_settings(cfg.world_model, attrs, episode_start, arrays["is_terminal"]) | dict(cfg.settings)
    wm_config = world_model_config(cfg.world_model, cfg.preset, settings)
    train_ids, validation_ids = split_episodes(len(episode_start), cfg.validation_fraction)
    out = cfg.out or default_out(cfg, attrs)
    spec = {"world_model": cfg.world_model, "config": wm_config.as_dict(), "feature": feature,
            "feature_shape": list(arrays[feature].shape[1:]), "action_dim": int(arrays["action"].shape[1]),
            "discrete_actions": attrs.get("action_space") == "discrete"}
    # What the trained weights depend on; a run directory never mixes two of these.
    identity = {"world_model": cfg.world_model, "preset": cfg.preset, "config": spec["config"], "seed": cfg.seed,
                "store_sha256": arrays_sha256(arrays), "train_episodes": train_ids,
                "validation_episodes": validation_ids}

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    replay = Replay(arrays, episode_start, feature).select_episodes(train_ids)
    replay.window_starts(wm_config.sequence_length)   # fails early if episodes are too short
    model = make_world_model(cfg.world_model, wm_config, feature, spec["feature_shape"], spec["action_dim"],
                             spec["discrete_actions"], seeds=(cfg.seed,))
    model = model.to(cfg.device).train()
    if cfg.compile:
        model.compile(compile_mode(cfg.device))
    optimizers = model.make_optimizers()
    with writer_lock(out, "train"):
        _check_run_dir(out, identity)
        _train(cfg, out, model, optimizers, rng, replay, spec, identity, store, attrs, show_progress)
    return out


def _train(cfg: TrainConfig, out: Path, model, optimizers, rng: np.random.Generator, replay: Replay, spec: dict,
           identity: dict, store: str, attrs: dict, show_progress: bool) -> None:
    wm_config = model.cfg
    checkpoint_path = out / CHECKPOINT
    checkpoint = load_checkpoint(checkpoint_path) if checkpoint_path.exists() else None
    start = restore_training(checkpoint, model, optimizers, rng) if checkpoint else 0
    if start >= cfg.updates:
        print(f"{out} is already trained ({start} updates)", file=sys.stderr)
        return
    out.mkdir(parents=True, exist_ok=True)
    run_info = {"identity": identity, "store": path_to_record(store, out), "encoder": attrs["encoder"],
                "encoder_weights_sha256": attrs["weights_sha256"], "env": attrs["env"], "variant": attrs["variant"],
                "source_dataset": attrs["source_dataset"], "properties": attrs["properties"],
                "train_config": cfg.model_dump(mode="json", exclude={"out"}) | {"store": path_to_record(store, out)},
                "pipeline_version": __version__}
    write_bytes_atomic(out / RUN_FILE, yaml.safe_dump(run_info, sort_keys=False).encode())

    live = open_live(out / LIVE_DIR, resume_from=start)
    timing = open_live(out / TIMING_DIR, resume_from=start)
    window = checkpoint["log_window"] if checkpoint else {"sums": {}, "count": 0}
    sums: dict[str, float] = defaultdict(float, window["sums"])
    count, timed, window_start = window["count"], 0, time.perf_counter()
    columns = (TextColumn(f"train {cfg.world_model} on {attrs['encoder']}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("updates {task.fields[loss]}"), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        bar = progress.add_task("train", total=cfg.updates, completed=start, loss="")
        for update in range(start + 1, cfg.updates + 1):
            batch = replay.sample(wm_config.batch_size, wm_config.sequence_length, rng, wm_config.frame_stack)
            metrics = model.train_step({k: v.to(cfg.device) for k, v in batch.items()}, optimizers)
            for key, value in metrics.items():
                sums[key] += value
            count += 1
            timed += 1
            progress.advance(bar)
            if update % cfg.log_every == 0 or update == cfg.updates:
                live.step = timing.step = update
                for key, value in sums.items():
                    live.log_metric(f"train/{key}", value / count)
                live.make_summary()
                timing.log_metric("updates_per_s", timed / (time.perf_counter() - window_start))
                timing.make_summary()
                progress.update(bar, loss=f"loss {sums['loss'] / count:.3f}")
                sums.clear()
                count, timed, window_start = 0, 0, time.perf_counter()
            if update % cfg.checkpoint_every == 0 or update == cfg.updates:
                save_checkpoint(checkpoint_path, model=model, optimizers=optimizers, update=update, rng=rng,
                                spec=spec, log_window={"sums": dict(sums), "count": count})


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

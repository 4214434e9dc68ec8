"""`pvr-pipe evaluate-model`: how well a trained world model predicts, on held-out or OOD data.

Scores the run's held-out episodes, and every episode of each further store of the same encoder
(`--store`, repeatable: the OOD variants), each under its variant's name:
  prediction error over an open-loop horizon: after `context` observed frames, the model predicts
    from actions alone; dreamer: symmetric KL between the open-loop prior and the posterior that
    saw the frames; tdmpc: MSE between rolled-out and encoded latents. Next to it, a baseline
    that copies the last observed latent.
  reward prediction from the filtered state (dreamer) or the encoded latent (tdmpc): MAE and
    Pearson correlation; dreamer's reconstruction error (symlog space, or pixels in [-.5, .5]).
  a linear probe of the true state from the raw stored features (fitted on the run's training
    episodes), which measures what the PVR keeps before any world model is trained.
Writes `<run>/quality/metrics.json` (per variant, for `dvc metrics`) and
`<run>/quality/prediction_error.tsv` (horizon, one column per variant and per copy baseline, for
`dvc plots`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from pipeline import __version__
from pipeline.analysis.linear_probe import probe_r2
from pipeline.analysis.model_quality import (DEFAULT_HORIZON, METRIC_NAME, prediction_error_curve,
                                             reward_and_reconstruction)
from pipeline.config import EvaluateModelConfig
from pipeline.errors import UserError
from pipeline.storage.atomic_files import write_bytes_atomic, write_json_atomic
from pipeline.storage.checkpoint import load_checkpoint, restore_model
from pipeline.storage.embedding_store import arrays_sha256, read_store
from pipeline.storage.runs import CHECKPOINT, PREDICTION_ERROR_FILE, QUALITY_DIR, RUN_FILE, recorded_path
from pipeline.storage.writer_lock import writer_lock
from world_models.replay import Replay

METRICS_FILE = "metrics.json"


def run(cfg: EvaluateModelConfig) -> Path:
    if cfg.run is None:
        raise UserError("no run; pass --run DIR (a directory made by `pvr-pipe train`)")
    run_file = cfg.run / RUN_FILE
    if not run_file.is_file():
        raise UserError(f"'{cfg.run}' is not a training run (no {RUN_FILE}); make one with `pvr-pipe train`")
    out = cfg.out or cfg.run / QUALITY_DIR
    with writer_lock(out, "evaluate-model"):
        run_info = yaml.safe_load(run_file.read_text())
        checkpoint = load_checkpoint(cfg.run / CHECKPOINT)
        spec = checkpoint["spec"]
        model = restore_model(checkpoint, cfg.device).eval()

        own_store = recorded_path(run_info["store"], cfg.run)
        train_arrays, train_starts, _ = read_store(own_store)
        if arrays_sha256(train_arrays) != run_info["identity"]["store_sha256"]:
            raise UserError(f"the run's store '{own_store}' changed since training; retrain the run")
        training = Replay(train_arrays, train_starts, spec["feature"])
        identity = run_info["identity"]
        scored = {run_info["variant"]: ("held-out", own_store, training.select_episodes(identity["validation_episodes"]))}
        for store in stores_to_score(cfg.stores, own_store):
            arrays, starts, attrs = read_store(store)
            _check_same_encoder(run_info, attrs, store)
            if attrs["variant"] in scored:
                raise UserError(f"store '{store}' repeats variant '{attrs['variant']}'; pass one store per variant")
            scored[attrs["variant"]] = ("all", store, Replay(arrays, starts, spec["feature"]))

        world_model = spec["world_model"]
        context = cfg.context if world_model == "dreamer" else 1
        shortest = min(int((r.episode_end - r.episode_start).min()) for _, _, r in scored.values())
        horizon = min(cfg.horizon or DEFAULT_HORIZON[world_model], shortest - context)
        if horizon < 1:
            raise UserError(f"episodes of {shortest} frames leave no room to predict after {context} context frames")
        fit = training.select_episodes(identity["train_episodes"])
        fit_groups = np.repeat(np.arange(fit.episodes), fit.episode_end - fit.episode_start)

        metrics = {"about": {"run": str(cfg.run), "world_model": world_model, "encoder": run_info["encoder"],
                             "seed": identity["seed"], "preset": identity["preset"], "env": run_info["env"],
                             "train_variant": run_info["variant"],
                             "encoder_properties": run_info["properties"], "prediction_metric": METRIC_NAME[world_model],
                             "context": context, "horizon": horizon, "pipeline_version": __version__}}
        curves = {}
        for variant, (episodes, store, replay) in scored.items():
            torch.manual_seed(0)
            curve = prediction_error_curve(model, replay, context, horizon, cfg.device)
            rewards = reward_and_reconstruction(model, replay, cfg.device)
            probe = probe_r2(fit.obs.numpy(), fit.state, fit_groups, replay.obs.numpy(), replay.state)
            curves[variant] = curve
            metrics[variant] = {
                "store": store, "episodes": episodes, "frames": replay.frames,
                "prediction_error": {"mean": float(curve["model"].mean()), "final": float(curve["model"][-1]),
                                     "copy_last_mean": float(curve["copy_last"].mean()),
                                     "ratio_to_copy_last": float(curve["model"].mean() / max(curve["copy_last"].mean(), 1e-12))},
                "reward": rewards["reward"],
                "reconstruction_mse": rewards["reconstruction_mse"],
                "probe": probe,
            }
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / METRICS_FILE, metrics)
        header = ["horizon", *curves, *(f"{v}_copy_last" for v in curves)]
        rows = ["\t".join(header)] + [
            "\t".join([str(k + 1), *(f"{c['model'][k]:.6g}" for c in curves.values()),
                       *(f"{c['copy_last'][k]:.6g}" for c in curves.values())]) for k in range(horizon)]
        write_bytes_atomic(out / PREDICTION_ERROR_FILE, ("\n".join(rows) + "\n").encode())
        return out


def stores_to_score(given: list[str], own_store: str) -> list[str]:
    """Each given store, or every `*.zarr` store inside a given directory except the run's own."""
    stores = []
    for path in (Path(p.rstrip("/")) for p in given):
        if path.is_dir() and not (path / "zarr.json").exists():
            found = sorted(p for p in path.glob("*.zarr") if p.resolve() != Path(own_store).resolve())
            if not found and not (path / Path(own_store).name).exists():
                raise UserError(f"'{path}' holds no embedding stores (*.zarr); pass a store or a directory of them")
            stores += [str(p) for p in found]
        else:
            stores.append(str(path))
    return stores


def _check_same_encoder(run_info: dict, attrs: dict, store: str) -> None:
    if attrs["encoder"] != run_info["encoder"] or attrs["weights_sha256"] != run_info["encoder_weights_sha256"]:
        raise UserError(f"store '{store}' was encoded with {attrs['encoder']} ({attrs['weights_sha256'][:12]}) but the run "
                        f"was trained on {run_info['encoder']} ({run_info['encoder_weights_sha256'][:12]}); "
                        f"evaluate on a store of the same encoder")
    if attrs["env"] != run_info["env"]:
        raise UserError(f"store '{store}' holds {attrs['env']} but the run was trained on {run_info['env']}")

"""Run directories: the files `train`, `finetune` and `evaluate` write, and loading an agent from one.

    runs/<dataset>/<encoder>/<world_model>/seed<k>/   run.yaml, checkpoint.safetensors (the world model),
                                                      live/, timing/
        quality/                                      evaluate-model: metrics.json, prediction_error.tsv
        finetune/                                     finetune.yaml, agent.safetensors (the whole agent,
                                                      with the provenance of its store), online.zarr,
                                                      live/, timing/
            evaluation/                               evaluate: metrics.json, frames/<look>.png

That is where the verbs write by default. The DVC study (dvc.yaml) gives each stage its own folder
instead, because one train and one finetune stage write every seed of an (env, encoder, world
model) and a DVC output folder holds one stage's files:

    runs/<env>/<encoder>/<world_model>/offline/seed<k>/      train
                                      /quality/seed<k>/      evaluate-model
                                      /finetune/seed<k>/     finetune
                                      /evaluation/seed<k>/   evaluate

The report finds runs by their files, wherever they are: an evaluation by its `frames/` folder,
and the agent it played by the seed it records.

`live/` holds what the run computed (losses, returns); `timing/` its wall-clock speeds, which no
two runs share, so they stay out of the files DVC hashes. Paths that a run's files record are
relative to the folder of the file, so a run works from any folder and a moved workspace keeps
working.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml

from pipeline.errors import UserError
from pipeline.storage.embedding_store import open_store

RUN_FILE = "run.yaml"
CHECKPOINT = "checkpoint.safetensors"
LIVE_DIR = "live"
TIMING_DIR = "timing"
QUALITY_DIR = "quality"
PREDICTION_ERROR_FILE = "prediction_error.tsv"   # evaluate-model's curve, next to its metrics.json
FINETUNE_DIR = "finetune"
FINETUNE_FILE = "finetune.yaml"
AGENT_CHECKPOINT = "agent.safetensors"
EVALUATION_DIR = "evaluation"
EVALUATION_FRAMES = "frames"     # evaluate's first frame of each look, next to its metrics.json


def left_by_a_run(path: Path, folders: tuple[str, ...]) -> bool:
    """What a run's folder may still hold when its own outputs are gone (DVC removes them before
    rerunning a stage): the folders of logs and later stages, a killed command's lock or half-written file."""
    return path.name in (LIVE_DIR, TIMING_DIR, *folders) or path.suffix in (".lock", ".partial")


def read_yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def path_to_record(path: str | Path, folder: Path) -> str:
    """`path` as a file in `folder` records it: relative to that folder (a URL stays as it is)."""
    if "://" in str(path):
        return str(path)
    return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))


def recorded_path(recorded: str, folder: Path) -> str:
    """The path that a file in `folder` recorded, usable from the current folder."""
    if "://" in recorded or os.path.isabs(recorded):
        return recorded
    return os.path.normpath(os.path.join(folder, recorded))


def agent_seed(run_dir: Path) -> int | None:
    """The seed an agent learned with: its fine-tune's, or its offline run's."""
    for name in (FINETUNE_FILE, RUN_FILE):
        identity = read_yaml(Path(run_dir) / name).get("identity")
        if identity:
            return int(identity["seed"])
    return None


def load_agent(run_dir: Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any], str]:
    """The agent of a fine-tune (or the planner of an offline tdmpc run), the attrs of its store,
    and a name saying what it is."""
    from pipeline.storage.checkpoint import load_checkpoint, restore_agent, restore_model
    from world_models.registry import make_agent

    run_dir = Path(run_dir)
    if (run_dir / AGENT_CHECKPOINT).is_file():
        checkpoint = load_checkpoint(run_dir / AGENT_CHECKPOINT)
        name = f"agent:{run_dir}@{checkpoint['progress']['env_steps']}steps"
        return restore_agent(checkpoint, device), checkpoint["store_attrs"], name
    if (run_dir / RUN_FILE).is_file():
        checkpoint = load_checkpoint(run_dir / CHECKPOINT)
        if checkpoint["spec"]["world_model"] != "tdmpc":
            raise UserError(f"'{run_dir}' is an offline {checkpoint['spec']['world_model']} run: its actor is only "
                            f"trained online; fine-tune it first (`pvr-pipe finetune --run {run_dir}`)")
        store = recorded_path(read_yaml(run_dir / RUN_FILE)["store"], run_dir)
        name = f"agent:{run_dir}@{checkpoint['update']}updates"
        return make_agent(restore_model(checkpoint, device)), dict(open_store(store).attrs), name
    raise UserError(f"'{run_dir}' holds no agent ({AGENT_CHECKPOINT} or {RUN_FILE}); make one with "
                    f"`pvr-pipe finetune` or `pvr-pipe train`")

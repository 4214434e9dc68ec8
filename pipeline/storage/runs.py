"""Run directories: the files `train`, `finetune` and `evaluate` write, and loading an agent from one.

    runs/<dataset>/<encoder>/<world_model>/seed<k>/   run.yaml, checkpoint.pt (the world model), live/
        quality/                                      evaluate-model: metrics.json, prediction_error.tsv
        finetune/                                     finetune.yaml, agent.pt (the whole agent, with the
                                                      provenance of its store), online.zarr, live/
            evaluation/                               evaluate: metrics.json, frames/<look>.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from pipeline.errors import UserError
from pipeline.storage.embedding_store import open_store

RUN_FILE = "run.yaml"
CHECKPOINT = "checkpoint.pt"
LIVE_DIR = "live"
QUALITY_DIR = "quality"
FINETUNE_DIR = "finetune"
FINETUNE_FILE = "finetune.yaml"
AGENT_CHECKPOINT = "agent.pt"
EVALUATION_DIR = "evaluation"


def read_yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


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
        store = read_yaml(run_dir / RUN_FILE)["store"]
        name = f"agent:{run_dir}@{checkpoint['update']}updates"
        return make_agent(restore_model(checkpoint, device)), dict(open_store(store).attrs), name
    raise UserError(f"'{run_dir}' holds no agent ({AGENT_CHECKPOINT} or {RUN_FILE}); make one with "
                    f"`pvr-pipe finetune` or `pvr-pipe train`")

"""Checkpoint files of world models and agents: weights, optimiser and RNG states, and the spec
that rebuilds them (through `world_models.registry`). Written atomically; a missing or unreadable
file is a `UserError`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.storage.atomic_files import write_bytes_atomic
from world_models.registry import make_agent, make_world_model


def save_checkpoint(path: Path, *, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer], update: int,
                    rng: np.random.Generator, spec: dict[str, Any]) -> None:
    """`spec`: world_model, config (dict), feature, feature_shape, action_dim, discrete_actions."""
    buffer = io.BytesIO()
    torch.save({"spec": spec, "update": update, "model": model.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                "rng": {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state}}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def save_agent_checkpoint(path: Path, *, agent: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                          rng: np.random.Generator, spec: dict[str, Any], progress: dict[str, Any],
                          store_attrs: dict[str, Any]) -> None:
    """A fine-tuned agent: weights, optimiser and RNG states, counters, and the provenance of the
    store whose encoder it sees through (so it can act without anything else)."""
    buffer = io.BytesIO()
    torch.save({"spec": spec, "agent": agent.state_dict(), "progress": progress, "store_attrs": store_attrs,
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                "rng": {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state}}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def restore_agent(checkpoint: dict[str, Any], device: str = "cpu") -> nn.Module:
    """The agent of a fine-tune checkpoint, ready to act."""
    spec = checkpoint["spec"]
    world_model = make_world_model(spec["world_model"], spec["config"], spec["feature"], spec["feature_shape"],
                                   spec["action_dim"], spec.get("discrete_actions", False))
    agent = make_agent(world_model)
    agent.load_state_dict(checkpoint["agent"])
    return agent.to(device)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no checkpoint at '{path}'; train one with `pvr-pipe train`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say so rather than show a traceback
        raise UserError(f"'{path}' is not a readable pvr-pipe checkpoint ({type(error).__name__}); "
                        f"retrain or restore it") from None


def restore_model(checkpoint: dict[str, Any], device: str = "cpu") -> nn.Module:
    spec = checkpoint["spec"]
    model = make_world_model(spec["world_model"], spec["config"], spec["feature"], spec["feature_shape"],
                             spec["action_dim"], spec.get("discrete_actions", False))
    model.load_state_dict(checkpoint["model"])
    return model.to(device)


def restore_training(checkpoint: dict[str, Any], model: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                     rng: np.random.Generator) -> int:
    """Load weights, optimiser and RNG states into a fresh model; returns the update count."""
    model.load_state_dict(checkpoint["model"])
    for name, opt in optimizers.items():
        opt.load_state_dict(checkpoint["optimizers"][name])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    rng.bit_generator.state = checkpoint["rng"]["numpy"]
    return int(checkpoint["update"])

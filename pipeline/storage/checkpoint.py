"""Checkpoint files of world models and agents: weights, optimiser and RNG states, and the spec
that rebuilds them (through `world_models.registry`).

One safetensors file: every tensor under the path of keys that leads to it, and everything else
(spec, counters, optimiser settings, RNG states) as canonical JSON in its metadata, so the same
state always gives the same bytes (a pickle's bytes depend on which objects happen to be shared).
Written atomically; a missing or unreadable file is a `UserError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from pipeline.errors import UserError
from pipeline.storage.atomic_files import write_bytes_atomic
from world_models.optimizers import optimizer_state_of_seed, stacked_optimizer_state
from world_models.registry import make_agent, make_world_model

METADATA_KEY = "pvr_pipe"
TENSOR, ITEMS = "__tensor__", "__items__"   # markers in the JSON skeleton


def save_checkpoint(path: Path, *, model_state: dict[str, Any], optimizer_states: dict[str, dict], update: int,
                    rng: np.random.Generator, torch_rng: torch.Tensor, spec: dict[str, Any],
                    log_window: dict[str, Any]) -> None:
    """An offline run's state: the model's and optimisers' state dicts (of one seed), its batch
    sampler `rng` and torch generator state. `spec`: world_model, config (dict), feature,
    feature_shape, action_dim, discrete_actions; `log_window`: the loss sums of the logging window
    in progress, so a resumed run logs the same."""
    write_state(path, {"spec": spec, "update": update, "model": model_state, "log_window": log_window,
                       "optimizers": optimizer_states,
                       "rng": {"torch": torch_rng, "numpy": rng.bit_generator.state}})


def save_agent_checkpoint(path: Path, *, agent_state: dict[str, Any], optimizer_states: dict[str, dict],
                          rng: np.random.Generator, torch_rng: torch.Tensor, spec: dict[str, Any],
                          progress: dict[str, Any], store_attrs: dict[str, Any]) -> None:
    """A fine-tuned agent (of one seed): weights, optimiser and RNG states, counters, and the
    provenance of the store whose encoder it sees through (so it can act without anything else)."""
    write_state(path, {"spec": spec, "agent": agent_state, "progress": progress, "store_attrs": store_attrs,
                       "optimizers": optimizer_states, "rng": {"torch": torch_rng, "numpy": rng.bit_generator.state}})


def write_state(path: Path, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _skeleton(state, "", tensors)
    metadata = {METADATA_KEY: json.dumps(skeleton, sort_keys=True, separators=(",", ":"))}
    write_bytes_atomic(path, save_safetensors(tensors, metadata))


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no checkpoint at '{path}'; train one with `pvr-pipe train`")
    data = path.read_bytes()
    try:
        tensors = load_safetensors(data)
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_size])["__metadata__"]
        return _rebuild(json.loads(metadata[METADATA_KEY]), tensors)
    except (SafetensorError, ValueError, KeyError, TypeError) as error:   # truncated, foreign or older
        raise UserError(f"'{path}' is not a readable pvr-pipe checkpoint ({type(error).__name__}); "
                        f"retrain or restore it") from None


def _skeleton(value: Any, key_path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON, its tensors moved into `tensors` under their key path."""
    if isinstance(value, torch.Tensor):
        tensors[key_path] = value.detach().to("cpu", copy=True).contiguous()
        return {TENSOR: key_path}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: _skeleton(item, f"{key_path}/{key}", tensors) for key, item in value.items()}
        # Optimiser states are keyed by parameter index: keep the keys' type.
        return {ITEMS: [[key, _skeleton(item, f"{key_path}/{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_skeleton(item, f"{key_path}/{i}", tensors) for i, item in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot write a {type(value).__name__} at '{key_path}' into a checkpoint")


def _rebuild(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if TENSOR in skeleton:
            return tensors[skeleton[TENSOR]]
        if ITEMS in skeleton:
            return {key: _rebuild(item, tensors) for key, item in skeleton[ITEMS]}
        return {key: _rebuild(item, tensors) for key, item in skeleton.items()}
    if isinstance(skeleton, list):
        return [_rebuild(item, tensors) for item in skeleton]
    return skeleton


def restore_agent(checkpoint: dict[str, Any], device: str = "cpu") -> nn.Module:
    """The agent of a fine-tune checkpoint, ready to act."""
    spec = checkpoint["spec"]
    world_model = make_world_model(spec["world_model"], spec["config"], spec["feature"], spec["feature_shape"],
                                   spec["action_dim"], spec.get("discrete_actions", False))
    agent = make_agent(world_model)
    agent.load_state_dict(checkpoint["agent"])
    return agent.to(device)


def restore_model(checkpoint: dict[str, Any], device: str = "cpu") -> nn.Module:
    spec = checkpoint["spec"]
    model = make_world_model(spec["world_model"], spec["config"], spec["feature"], spec["feature_shape"],
                             spec["action_dim"], spec.get("discrete_actions", False))
    model.load_state_dict(checkpoint["model"])
    return model.to(device)


def restore_states(checkpoint: dict[str, Any], optimizers: dict[str, torch.optim.Optimizer],
                   rng: np.random.Generator) -> None:
    """Optimiser and RNG states, as they were when the checkpoint was written."""
    for name, opt in optimizers.items():
        opt.load_state_dict(checkpoint["optimizers"][name])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    rng.bit_generator.state = checkpoint["rng"]["numpy"]


def seed_states(model: nn.Module, optimizers: dict[str, torch.optim.Optimizer], k: int,
                count: int) -> tuple[dict, dict, torch.Tensor]:
    """Seed k's state dicts of `model` (a world model or an agent) and of its optimisers, and its
    torch generator state, as its lone run holds them. A model of several seeds (tdmpc) draws
    nothing from torch's global generator, so a lone run's is as seeding left it."""
    if count == 1:
        return model.state_dict(), {n: o.state_dict() for n, o in optimizers.items()}, torch.get_rng_state()
    return (model.seed_state(k), {n: optimizer_state_of_seed(o.state_dict(), k) for n, o in optimizers.items()},
            torch.Generator().manual_seed(model.seeds[k]).get_state())


def restore_seed_states(model: nn.Module, optimizers: dict[str, torch.optim.Optimizer], checkpoints: list[dict],
                        rngs: list[np.random.Generator], key: str) -> None:
    """Every seed's weights (`checkpoint[key]`), optimiser states and generators from its checkpoint."""
    if len(checkpoints) == 1:
        model.load_state_dict(checkpoints[0][key])
        restore_states(checkpoints[0], optimizers, rngs[0])
        return
    model.load_seed_states([c[key] for c in checkpoints])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(stacked_optimizer_state([c["optimizers"][name] for c in checkpoints]))
    for checkpoint, rng in zip(checkpoints, rngs):
        rng.bit_generator.state = checkpoint["rng"]["numpy"]

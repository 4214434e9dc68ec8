"""The env registry: ids such as `dmc/cartpole-swingup`, their variants, and `make_env`.

Every env is a `gymnasium.Env` whose observation is a dict with `image` (H x W x 3 uint8, the
agent's camera) and `state` (the low-dimensional simulator state, float32, for probing). With
`step_frames=False` only `reset` returns a frame and steps observe the state alone: an agent that
reads the state needs no frames, and rendering costs DMC ~70x its physics.
Suite modules are imported only when one of their envs is made, so listing envs is cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import gymnasium

from pipeline.errors import UserError


@dataclass(frozen=True)
class EnvEntry:
    id: str
    suite: str
    variants: tuple[str, ...]
    factory: str  # "module:callable", imported on first use
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, EnvEntry] = {}


def register(entry: EnvEntry) -> None:
    _REGISTRY[entry.id] = entry


def env_ids() -> list[str]:
    _load_suites()
    return sorted(_REGISTRY)


def get_entry(env_id: str) -> EnvEntry:
    _load_suites()
    if env_id not in _REGISTRY:
        raise UserError(f"unknown env '{env_id}'; valid envs: {', '.join(sorted(_REGISTRY))} "
                        "(see `pvr-pipe envs`)")
    return _REGISTRY[env_id]


def check_variant(env_id: str, variant: str) -> None:
    entry = get_entry(env_id)
    if variant not in entry.variants:
        raise UserError(f"unknown variant '{variant}' for env '{env_id}'; "
                        f"valid variants: {', '.join(entry.variants)}")


def make_env(env_id: str, variant: str = "train", variant_seed: int = 0, **options: Any) -> gymnasium.Env:
    """Build env `env_id` with visual variant `variant` (fixed by `variant_seed`)."""
    check_variant(env_id, variant)
    entry = get_entry(env_id)
    module_name, attr = entry.factory.split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(variant=variant, variant_seed=variant_seed, **entry.kwargs, **options)


def _load_suites() -> None:
    # Importing a suite's registration module is cheap: simulators load only in make_env.
    from pipeline.envs import dmc, maniskill, maniskill2, miniworld, toy  # noqa: F401

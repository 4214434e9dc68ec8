"""The world models by name, each sized by one preset name plus optional overrides."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from world_models import dreamer, tdmpc
from world_models.dreamer_agent import DreamerAgent
from world_models.errors import WorldModelError
from world_models.tdmpc_agent import TDMPCAgent

WORLD_MODELS = {
    "dreamer": (dreamer.DreamerWorldModel, dreamer.DreamerConfig, dreamer.PRESETS),
    "tdmpc": (tdmpc.TDMPCWorldModel, tdmpc.TDMPCConfig, tdmpc.PRESETS),
}
CHOICES = {"embed_head": ("linear", "mlp"), "actor_grad": ("auto", "reinforce", "dynamics")}
# Whole-number settings that may be 0 (layer counts, augmentation, warm-up, policy samples); every
# other one is a size or count and must be at least 1.
MAY_BE_ZERO = {"mlp_layers", "head_layers", "num_enc_layers", "warmup", "shift_pad", "num_pi_trajs"}


def world_model_config(name: str, preset: str, overrides: dict[str, Any]):
    """The preset's config with `overrides` (None values ignored); unknown names are a WorldModelError."""
    if name not in WORLD_MODELS:
        raise WorldModelError(f"unknown world model '{name}'; choose one of {', '.join(WORLD_MODELS)}")
    _, config_class, presets = WORLD_MODELS[name]
    if preset not in presets:
        raise WorldModelError(f"unknown preset '{preset}' for {name}; choose one of {', '.join(presets)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(config_class.__dataclass_fields__))
    if unknown:
        raise WorldModelError(f"{name} has no setting {unknown}; its settings: {', '.join(config_class.__dataclass_fields__)}")
    fields = config_class.__dataclass_fields__
    return replace(presets[preset], **{key: _coerce(name, key, value, fields[key].type) for key, value in given.items()})


def _coerce(name: str, key: str, value: Any, type_name: str) -> Any:
    """YAML reads `1e-3` as a string; settings take the type their field declares."""
    caster = {"float": float, "int": int, "str": str, "bool": _boolean}[type_name]
    try:
        if type_name == "int" and float(value) != int(float(value)):
            raise ValueError
        cast = caster(float(value)) if type_name == "int" else caster(value)
    except (TypeError, ValueError):
        raise WorldModelError(f"{name} setting '{key}' must be {type_name}, got {value!r}") from None
    if type_name == "int" and cast < (0 if key in MAY_BE_ZERO else 1):
        raise WorldModelError(f"{name} setting '{key}' must be at least {0 if key in MAY_BE_ZERO else 1}, got {value!r}")
    if key in CHOICES and cast not in CHOICES[key]:
        raise WorldModelError(f"{name} setting '{key}' must be {' or '.join(CHOICES[key])}, got {value!r}")
    return cast


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ValueError(value)


def with_settings(name: str, config: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A trained model's config with `settings` over it; a setting that would reshape the weights is
    a WorldModelError."""
    module = {"dreamer": dreamer, "tdmpc": tdmpc}[name]
    reshaping = sorted(k for k in settings if k in module.ARCHITECTURE and settings[k] != config.get(k))
    if reshaping:
        raise WorldModelError(f"{name} settings {reshaping} shape the trained weights; train a new run with them instead")
    _, config_class, presets = WORLD_MODELS[name]
    return world_model_config(name, next(iter(presets)), {**config, **settings}).as_dict()


def make_world_model(name: str, config, feature: str, feature_shape: tuple[int, ...], action_dim: int,
                     discrete_actions: bool = False, seeds: tuple[int, ...] = (0,)) -> nn.Module:
    """A freshly initialised world model. tdmpc holds a copy per seed in `seeds`, each initialised
    from its seed; dreamer holds one, initialised from torch's global generator."""
    model_class, config_class, _ = WORLD_MODELS[name]
    if isinstance(config, dict):
        config = config_class(**config)
    if name == "tdmpc":
        return model_class(feature, tuple(feature_shape), action_dim, config, discrete_actions, seeds=tuple(seeds))
    if len(seeds) != 1:
        raise WorldModelError(f"{name} trains one seed per model; run its seeds one by one")
    return model_class(feature, tuple(feature_shape), action_dim, config, discrete_actions)


# `compile: auto` compiles tdmpc's update and planning on runs of at least this many updates: on the
# CPU compiling costs 10-60 s per process (up to ~5 min at `s` on state) and saves ~25 ms per
# agent step at `xs` and 0.1-1 s on embeddings and pixels (README: Benchmarks). Dreamer compiles
# only when asked: its compiled RSSM steps saved nothing measurable in an `xs` update on the CPU.
COMPILE_FROM_UPDATES = 10_000


def compiles(name: str, setting: bool | str, updates: float) -> bool:
    """Whether a run of `updates` gradient updates compiles, for `compile` True, False or 'auto'."""
    if setting == "auto":
        return name == "tdmpc" and updates >= COMPILE_FROM_UPDATES
    return bool(setting)


def compile_mode(device: str) -> str:
    """torch.compile's mode for a device: CUDA graphs on a GPU (as TD-MPC2), inductor's default on the CPU."""
    return "reduce-overhead" if device.startswith("cuda") else "default"


def make_agent(world_model: nn.Module) -> nn.Module:
    """The acting and learning agent around a world model: DreamerV3's actor-critic or TD-MPC2's planner."""
    if isinstance(world_model, dreamer.DreamerWorldModel):
        return DreamerAgent(world_model)
    return TDMPCAgent(world_model)

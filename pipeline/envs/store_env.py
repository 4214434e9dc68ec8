"""The env an embedding store's frames were collected in, rebuilt to play online.

Fine-tuning and evaluation play in the env, look and rendering the store records
(`collect_config` in its attrs), so the frames they encode are rendered as the stored ones were.
"""

from __future__ import annotations

from typing import Any

from pipeline.envs.env_pool import EnvPool
from pipeline.errors import UserError


def env_settings(attrs: dict) -> dict[str, Any]:
    """How the store's dataset was collected: the env, look and rendering to play online."""
    collect = attrs.get("collect_config")
    if collect is None:
        raise UserError(f"store '{attrs.get('source_dataset')}' does not record how its frames were collected "
                        f"(made by an older pvr-pipe or not by `pvr-pipe encode`); re-encode it")
    return {key: collect[key] for key in ("env", "variant", "variant_seed", "frame_size", "action_repeat", "camera",
                                         "fast_render", "max_steps")}


def env_options(settings: dict) -> dict[str, Any]:
    """`make_env` options that render as the store's dataset was rendered."""
    return {key: settings[key] for key in ("frame_size", "action_repeat", "camera", "fast_render")}


def make_pool(settings: dict, variant: str, count: int, step_frames: bool = True) -> EnvPool:
    """`step_frames=False`: steps observe the state alone (for encoders that read the state)."""
    return EnvPool(settings["env"], variant, settings["variant_seed"], count, step_frames=step_frames,
                   **env_options(settings))

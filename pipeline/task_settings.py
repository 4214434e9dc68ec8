"""What a world model and its fine-tune take from the task a store was collected on, not from the user.

The episode length is the env's time limit (capped by `max_steps`), not the mean stored length:
episodes that end early on success must not shorten it. TD-MPC2 takes its discount from it, and
plays max(1000, 5 x episode length) random steps before it learns from nothing. Envs that end
episodes with true terminals get its termination head.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from world_models.tdmpc import heuristic_discount


def episode_length(attrs: dict[str, Any], episode_start: np.ndarray, frames: int, max_steps: int | None = None) -> int:
    """Agent steps an episode of the store's task lasts at most; `max_steps` caps the episodes played."""
    cap = max_steps or (attrs.get("collect_config") or {}).get("max_steps")
    limit = attrs.get("time_limit")
    if limit is None:   # a store of an older pvr-pipe: its longest episode
        limit = int(np.diff(np.append(episode_start, frames)).max()) - 1
    return min(limit, cap) if cap else limit


def task_settings(world_model: str, attrs: dict[str, Any], episode_start: np.ndarray, is_terminal: np.ndarray,
                  max_steps: int | None = None) -> dict[str, Any]:
    """Defaults under the user's `--set` settings."""
    if world_model != "tdmpc":
        return {}
    episodic = attrs.get("episodic")
    return {"discount": heuristic_discount(episode_length(attrs, episode_start, len(is_terminal), max_steps)),
            "episodic": bool(is_terminal.any()) if episodic is None else bool(episodic)}


def default_seed_steps(world_model: str, from_nothing: bool, length: int) -> int:
    """Random agent steps before the agent acts: TD-MPC2's from nothing, none from a trained run
    (DreamerV3 acts from the start)."""
    return max(1000, 5 * length) if world_model == "tdmpc" and from_nothing else 0


def updates_owed(before: int, after: int, seed_steps: int, train_ratio: float) -> float:
    """Updates earned by agent steps (before, after]: none while seeding, then one burst of
    `seed_steps` x `train_ratio` on the seed data (TD-MPC2's pretraining), then `train_ratio` a step."""
    if after <= seed_steps:
        return 0.0
    burst = train_ratio * seed_steps if before <= seed_steps else 0.0
    return burst + train_ratio * (after - max(before, seed_steps))

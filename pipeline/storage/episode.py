"""One episode in the RLDS / DreamerV3 step convention, the unit of a trajectory shard.

Step t holds observation t (`frames[t]`, `state[t]`), the reward received on arriving at it
(`reward[0] = 0`), and the action taken after it (`action[T]` is zeros: no action follows the
last observation). `is_first[0]` and `is_last[T]` are set; `is_terminal[T]` only when the
episode ended in a true terminal state rather than by time limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

STEP_ARRAYS = ("action", "reward", "is_first", "is_last", "is_terminal", "state")


@dataclass
class Episode:
    frames: np.ndarray       # (T+1, H, W, 3) uint8
    action: np.ndarray       # (T+1, A) float32
    reward: np.ndarray       # (T+1,) float32
    is_first: np.ndarray     # (T+1,) bool
    is_last: np.ndarray      # (T+1,) bool
    is_terminal: np.ndarray  # (T+1,) bool
    state: np.ndarray        # (T+1, S) float32
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Transitions (actions taken): one fewer than frames."""
        return len(self.frames) - 1

    @property
    def total_return(self) -> float:
        return float(self.reward.sum())

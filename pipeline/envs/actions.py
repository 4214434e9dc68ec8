"""How actions are stored, and how an agent's action vector becomes what `env.step` takes.

Datasets and stores hold every action as a float32 vector (`action.npy`, (T+1, A)): a `Box`
action scaled to [-1, 1] (unchanged for the usual [-1, 1] boxes of DMC and ManiSkill), a
`Discrete(n)` action one-hot, as DreamerV3 does. Agents act in that vector space;
`to_env_action` maps a vector back to the env's space: the argmax for discrete actions, the
box's bounds for continuous ones.
"""

from __future__ import annotations

import gymnasium
import numpy as np


def is_discrete(space: gymnasium.Space) -> bool:
    return isinstance(space, gymnasium.spaces.Discrete)


def action_dim(space: gymnasium.Space) -> int:
    return int(space.n) if is_discrete(space) else int(np.prod(space.shape))


def to_stored(action, space: gymnasium.Space) -> np.ndarray:
    """An action `env.step` took -> the float32 vector a dataset stores (one-hot, or scaled to
    [-1, 1] from the box's bounds: the identity for the usual [-1, 1] boxes)."""
    if is_discrete(space):
        vector = np.zeros(space.n, np.float32)
        vector[int(action) - int(space.start)] = 1.0
        return vector
    action = np.asarray(action, np.float32).reshape(-1)
    low, high = space.low.astype(np.float32).reshape(-1), space.high.astype(np.float32).reshape(-1)
    finite = np.isfinite(low) & np.isfinite(high)
    span = np.where(finite, high - low, 1.0)
    return np.where(finite, 2.0 * (action - low) / span - 1.0, action).astype(np.float32)


def to_env_action(vector: np.ndarray, space: gymnasium.Space):
    """An agent's vector in [-1, 1]^A (continuous) or of per-action scores (discrete) -> env action."""
    vector = np.asarray(vector, np.float32)
    if is_discrete(space):
        return int(np.argmax(vector)) + int(space.start)
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    finite = np.isfinite(low) & np.isfinite(high)
    scaled = np.where(finite, low + (np.clip(vector, -1.0, 1.0) + 1.0) * 0.5 * (high - low), vector)
    return scaled.astype(np.float32).reshape(space.shape)


"""Behaviour policies that collect episodes.

A policy is anything with `name`, `reset(seed)` and `act(observation) -> action`. `random` is
built in; any other policy is named `package.module:factory`, where `factory(action_space)`
returns a policy, so a trained agent (or a scripted one) can collect without changing pvr-pipe.
The policy's `name` is recorded with every episode it produced.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import gymnasium
import numpy as np

from pipeline.envs.actions import is_discrete
from pipeline.errors import UserError


class Policy(Protocol):
    name: str

    def reset(self, seed: int) -> None: ...

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray: ...


class RandomPolicy:
    """Uniform random actions: over the action box, or over a discrete action set."""

    name = "random"

    def __init__(self, action_space: gymnasium.spaces.Box | gymnasium.spaces.Discrete):
        self._space = action_space
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray | int:
        if is_discrete(self._space):
            return int(self._space.start + self._rng.integers(self._space.n))
        return self._rng.uniform(self._space.low, self._space.high).astype(np.float32)


def make_policy(spec: str, action_space: gymnasium.spaces.Box) -> Policy:
    """`random`, or `package.module:factory` called with the action space."""
    if spec == "random":
        return RandomPolicy(action_space)
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise UserError(f"unknown policy '{spec}'; use 'random' or 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UserError(f"policy '{spec}' cannot be imported ({error}); "
                        "use 'random' or 'package.module:factory'") from None
    return factory(action_space)

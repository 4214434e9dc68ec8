"""Behaviour policies that collect episodes.

A policy is anything with `name`, `reset(seed)` and `act(observation) -> action`. Built in:
`random`, and `agent:DIR`, a trained agent (a fine-tune directory, or an offline tdmpc run)
acting through the frozen encoder that built its store, exploring as it did in training, so
that datasets of mixed quality can be collected. Any other policy is named
`package.module:factory`, where `factory(action_space)` returns a policy. The policy's `name`
is recorded with every episode it produced.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import gymnasium
import numpy as np

from pipeline.envs.actions import action_dim, is_discrete, to_env_action
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


class AgentPolicy:
    """A trained agent seeing each frame through the encoder of its store, one env at a time."""

    def __init__(self, run_dir: Path, action_space: gymnasium.Space):
        from pipeline.encoders.store_encoder import StoreEncoder
        from pipeline.rollout import AgentActor
        from pipeline.storage.runs import load_agent

        agent, attrs, self.name = load_agent(run_dir)
        if agent.action_dim != action_dim(action_space):
            raise UserError(f"the agent in '{run_dir}' acts with {agent.action_dim}-d actions but this env takes "
                            f"{action_dim(action_space)}-d ones; collect in the env it was trained on")
        self._encoder, self._actor, self._space = StoreEncoder(attrs), AgentActor(agent, "cpu", explore=True), action_space
        self._first = True

    def reset(self, seed: int) -> None:
        import torch

        torch.manual_seed(seed)
        self._first = True

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray | int:
        vector = self._actor(self._encoder.observe([observation]), np.array([self._first]))
        self._first = False
        return to_env_action(vector[0], self._space)


def make_policy(spec: str, action_space: gymnasium.spaces.Box) -> Policy:
    """`random`, `agent:DIR`, or `package.module:factory` called with the action space."""
    if spec == "random":
        return RandomPolicy(action_space)
    if spec.startswith("agent:"):
        return AgentPolicy(Path(spec.removeprefix("agent:")), action_space)
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise UserError(f"unknown policy '{spec}'; use 'random' or 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UserError(f"policy '{spec}' cannot be imported ({error}); "
                        "use 'random' or 'package.module:factory'") from None
    return factory(action_space)

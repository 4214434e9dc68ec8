"""`toy/pointmass-reach`: a point mass pushed towards a goal, drawn into a small image.

A built-in pixel env with no simulator dependency, for fast tests and smoke runs beside the
real suites (never instead of them). The mass starts anywhere in [-0.8, 0.8]^2; the goal is the
centre, so the reward depends on one object's position, which world models learn from pixels in
a few hundred updates (a goal placed at random makes it a relation between two objects, which
takes them thousands). Dynamics: velocity damped by 0.9, force = action * 0.05; reward =
1 - distance to the goal / 2 (in [0, 1]); 100 agent steps per episode.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from pipeline.envs.registry import EnvEntry, register
from pipeline.envs.variants import TRAIN, random_colors, variant_rng

VARIANTS = (TRAIN, "agent_color", "floor_color", "lighting", "camera")
EPISODE_STEPS = 100
_AGENT_RADIUS, _GOAL_RADIUS = 0.25, 0.1

register(EnvEntry(id="toy/pointmass-reach", suite="toy", variants=VARIANTS,
                  factory="pipeline.envs.toy:PointMassReach",
                  description="built-in point mass reaching a goal (tests, smoke runs)"))


class PointMassReach(gymnasium.Env):
    metadata = {"render_modes": ["rgb_array"]}
    state_keys = {"position": 2, "velocity": 2, "goal": 2}
    time_limit, episodic = EPISODE_STEPS, False

    def __init__(self, variant: str = TRAIN, variant_seed: int = 0, frame_size: int = 64,
                 action_repeat: int | None = None, camera: int | None = None, fast_render: bool = False,
                 step_frames: bool = True):
        self.frame_size, self.step_frames = frame_size, step_frames
        self.action_repeat = action_repeat or 1
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = gymnasium.spaces.Dict({
            "image": gymnasium.spaces.Box(0, 255, (frame_size, frame_size, 3), np.uint8),
            "state": gymnasium.spaces.Box(-np.inf, np.inf, (6,), np.float32),
        })
        self._look = _look(variant, variant_seed)
        self._rng = np.random.default_rng(0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._pos = self._rng.uniform(-0.8, 0.8, 2)
        self._goal = np.zeros(2)
        self._vel = np.zeros(2)
        self._t = 0
        return self._observation(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        reward = 0.0
        for _ in range(self.action_repeat):
            self._vel = 0.9 * self._vel + 0.05 * action
            self._pos = np.clip(self._pos + self._vel, -1.0, 1.0)
            reward += 1.0 - np.linalg.norm(self._pos - self._goal) / 2.0
        self._t += 1
        return self._observation(self.step_frames), float(reward), False, self._t >= EPISODE_STEPS, {}

    def render(self) -> np.ndarray:
        look, size = self._look, self.frame_size
        # Pixel centres in world coordinates; the camera variant zooms and shifts the view.
        axis = (np.arange(size) + 0.5) / size * 2.0 - 1.0
        ys, xs = np.meshgrid(axis, axis, indexing="ij")
        xs, ys = xs * look["zoom"] + look["shift"][0], -ys * look["zoom"] + look["shift"][1]
        image = np.broadcast_to(look["floor"], (size, size, 3)).copy()
        for centre, radius, color in ((self._goal, _GOAL_RADIUS, look["goal"]),
                                      (self._pos, _AGENT_RADIUS, look["agent"])):
            image[(xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius ** 2] = color
        return np.clip(image * look["light"] * 255.0, 0, 255).astype(np.uint8)

    def _observation(self, frame: bool = True) -> dict[str, np.ndarray]:
        state = np.concatenate([self._pos, self._vel, self._goal]).astype(np.float32)
        return {"image": self.render(), "state": state} if frame else {"state": state}


def _look(variant: str, seed: int) -> dict[str, Any]:
    look = {"floor": np.array([0.15, 0.2, 0.3]), "agent": np.array([0.9, 0.5, 0.1]),
            "goal": np.array([0.2, 0.8, 0.3]), "light": np.ones(3), "zoom": 1.0, "shift": np.zeros(2)}
    if variant == TRAIN:
        return look
    rng = variant_rng(variant, seed)
    if variant == "agent_color":
        look["agent"] = random_colors(rng, 1)[0]
    elif variant == "floor_color":
        look["floor"] = random_colors(rng, 1, high=0.6)[0]
    elif variant == "lighting":
        look["light"] = rng.uniform(0.4, 1.6, size=3)
    elif variant == "camera":
        look["zoom"] = rng.uniform(1.1, 1.4)
        look["shift"] = rng.uniform(-0.2, 0.2, size=2)
    else:
        raise ValueError(f"toy env has no variant {variant!r}")
    return look

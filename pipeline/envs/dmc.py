"""DeepMind Control Suite (`dmc/<domain>-<task>`) from pixels, as DreamerV3 and TD-MPC2 use it.

Conventions: action repeat 2 for every task (both agents' published configs; override with
`action_repeat`), episodes of 1000 simulator steps (so 500 agent steps), camera 0 except
quadruped (camera 2), square frames of `frame_size` pixels (64 by default; 224 for PVRs).
dm_control is imported only when an env is built; MUJOCO_GL defaults to `egl` (headless).
"""

from __future__ import annotations

import math
import os
from typing import Any

import gymnasium
import numpy as np

from pipeline.envs.registry import EnvEntry, register
from pipeline.envs.variants import TRAIN, random_colors, variant_rng
from pipeline.errors import UserError

VARIANTS = (TRAIN, "agent_color", "floor_color", "lighting", "camera", "texture")
DEFAULT_ACTION_REPEAT = 2
TASKS = (
    "cartpole-swingup", "cartpole-balance", "cheetah-run", "walker-walk", "walker-run",
    "reacher-easy", "reacher-hard", "finger-spin", "pendulum-swingup", "cup-catch",
    "hopper-hop", "quadruped-run",
)
_CAMERA = {"quadruped": 2}
_DOMAIN_NAMES = {"cup": "ball_in_cup"}
# Materials that are not part of the agent in dm_control's shared materials.xml.
_SCENE_MATERIALS = {"grid", "target", "target_default", "target_highlight", "site"}

for _task in TASKS:
    register(EnvEntry(id=f"dmc/{_task}", suite="dmc", variants=VARIANTS,
                      factory="pipeline.envs.dmc:DMCEnv", kwargs={"task": _task},
                      description=f"DeepMind Control {_task}"))


class DMCEnv(gymnasium.Env):
    metadata = {"render_modes": ["rgb_array"]}
    episodic = False   # every episode runs to the time limit

    def __init__(self, task: str, variant: str = TRAIN, variant_seed: int = 0, frame_size: int = 64,
                 action_repeat: int | None = None, camera: int | str | None = None, fast_render: bool = False,
                 step_frames: bool = True):
        os.environ.setdefault("MUJOCO_GL", "egl")
        from dm_control import suite

        domain, task_name = task.split("-", 1)
        domain = _DOMAIN_NAMES.get(domain, domain)
        self._env = suite.load(domain, task_name.replace("-", "_"), task_kwargs={"random": 0})
        self.frame_size, self.step_frames = frame_size, step_frames
        self.action_repeat = action_repeat or DEFAULT_ACTION_REPEAT
        self.time_limit = math.ceil(self._env._step_limit / self.action_repeat)   # agent steps
        self.camera = _camera_id(self._env.physics.model, task, _CAMERA.get(domain, 0) if camera is None else camera)
        # Shadows and reflections off render ~3.5x faster but change the images: opt-in only.
        self._render_flags = {"shadow": False, "reflection": False} if fast_render else None

        spec = self._env.action_spec()
        self.action_space = gymnasium.spaces.Box(spec.minimum.astype(np.float32),
                                                 spec.maximum.astype(np.float32), dtype=np.float32)
        obs_spec = self._env.observation_spec()
        self.state_keys = {k: int(np.prod(v.shape)) for k, v in obs_spec.items()}
        self.observation_space = gymnasium.spaces.Dict({
            "image": gymnasium.spaces.Box(0, 255, (frame_size, frame_size, 3), np.uint8),
            "state": gymnasium.spaces.Box(-np.inf, np.inf, (sum(self.state_keys.values()),), np.float32),
        })
        apply_variant(self._env.physics, variant, variant_seed, self.camera)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)
        return self._observation(self._env.reset()), {}

    def step(self, action):
        reward = 0.0
        for _ in range(self.action_repeat):
            time_step = self._env.step(action)
            reward += time_step.reward or 0.0
            if time_step.last():
                break
        # dm_control ends episodes by time limit with discount 1; discount 0 means a true terminal.
        terminated = time_step.last() and time_step.discount == 0.0
        truncated = time_step.last() and not terminated
        return self._observation(time_step, self.step_frames), reward, terminated, truncated, {}

    def render(self) -> np.ndarray:
        return self._env.physics.render(self.frame_size, self.frame_size, camera_id=self.camera,
                                        render_flag_overrides=self._render_flags)

    def _observation(self, time_step, frame: bool = True) -> dict[str, np.ndarray]:
        state = np.concatenate([np.asarray(v, np.float32).ravel() for v in time_step.observation.values()])
        return {"image": self.render(), "state": state} if frame else {"state": state}

    def close(self):
        self._env.close()


def apply_variant(physics, variant: str, seed: int, camera: int) -> None:
    """Change how the scene looks, in place; `train` leaves it as the task defines it."""
    if variant == TRAIN:
        return
    rng = variant_rng(variant, seed)
    model = physics.model
    material_names = [model.id2name(i, "material") for i in range(model.nmat)]
    if variant == "agent_color":
        agent = [i for i, name in enumerate(material_names) if name not in _SCENE_MATERIALS]
        model.mat_rgba[agent, :3] = random_colors(rng, len(agent))
        plain = np.flatnonzero((model.geom_matid < 0) & (np.arange(model.ngeom) != _floor_geom(model)))
        model.geom_rgba[plain, :3] = random_colors(rng, len(plain))
    elif variant == "floor_color":
        model.mat_rgba[material_names.index("grid"), :3] = random_colors(rng, 1, low=0.3, high=1.0)[0] * 2.5
    elif variant == "lighting":
        model.light_diffuse[:] = rng.uniform(0.2, 1.0, size=(model.nlight, 3))
        model.vis.headlight.ambient[:] = rng.uniform(0.0, 0.6, size=3)
        model.vis.headlight.diffuse[:] = rng.uniform(0.2, 1.0, size=3)
    elif variant == "camera":
        model.cam_fovy[camera] *= rng.uniform(0.8, 1.25)
        model.cam_pos[camera] += rng.uniform(-0.3, 0.3, size=3)
    elif variant == "texture":
        _replace_textures(physics, rng)
    else:
        raise ValueError(f"DMC has no variant {variant!r}")


def _camera_id(model, task: str, camera: int | str) -> int:
    """A camera index or name -> its index; anything else is a UserError naming the valid ones."""
    names = [model.id2name(i, "camera") for i in range(model.ncam)]
    if isinstance(camera, int) and 0 <= camera < model.ncam:
        return camera
    if camera in names:
        return names.index(camera)
    raise UserError(f"dmc/{task} has no camera {camera!r}; its cameras: "
                    f"{', '.join(f'{i} ({name})' for i, name in enumerate(names))}")


def _floor_geom(model) -> int:
    names = [model.id2name(i, "geom") for i in range(model.ngeom)]
    return names.index("floor") if "floor" in names else -1


def _replace_textures(physics, rng: np.random.Generator) -> None:
    """Random two-colour checker patterns for every texture, uploaded to the GL context."""
    import mujoco

    model = physics.model
    for tex_id in range(model.ntex):
        height, width, channels = (int(model.tex_height[tex_id]), int(model.tex_width[tex_id]),
                                   int(model.tex_nchannel[tex_id]))
        colors = (random_colors(rng, 2) * 255).astype(np.uint8)
        cell = int(rng.integers(8, 64))
        rows, cols = np.indices((height, width))
        pattern = ((rows // cell + cols // cell) % 2).astype(np.intp)
        image = colors[pattern]
        if channels == 4:
            image = np.concatenate([image, np.full((height, width, 1), 255, np.uint8)], axis=-1)
        start = int(model.tex_adr[tex_id])
        model.tex_data[start:start + height * width * channels] = image.reshape(-1)[:height * width * channels]
        with physics.contexts.gl.make_current() as ctx:
            ctx.call(mujoco.mjr_uploadTexture, model.ptr, physics.contexts.mujoco.ptr, tex_id)

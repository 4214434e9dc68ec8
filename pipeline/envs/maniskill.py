"""ManiSkill 3 (`maniskill/<Task>-v1`): tabletop tasks for a Panda arm, seen from its wrist.

Conventions: the Panda with ManiSkill's wrist camera (`panda_wristcam`) in every task, so every
task has the same two cameras: `hand_camera` (the default; the paper used a wrist camera) and
`base_camera` (the task's fixed view of the table); only the chosen one is rendered (`camera`:
a name, or its index in CAMERAS); `fast_render` has no effect (no shadows by default). Control mode
`pd_ee_delta_pos` (4 numbers in [-1, 1]: end-effector position deltas and the gripper; the gripper
keeps pointing down), as TD-MPC2 controls ManiSkill's cube tasks; action repeat 1; ManiSkill's
`normalized_dense` reward; square frames of `frame_size` pixels. Episodes end at the
task's time limit (a truncation); success does not end them (it is in `info["success"]`) and no
task here can fail, so no step is a terminal. (With `panda_wristcam`, PickCube's
robot-is-still reward term also counts the fingers' velocities: ManiSkill drops them for `panda`.)

The state is ManiSkill's own state observation in the order its `state` obs mode flattens it: the
arm's joint positions and velocities (`qpos`, `qvel`, 9 each), then the task's extras (TCP pose,
object poses, goal position, relative positions...) named in `state_keys`.

Physics runs on the CPU (one env). Rendering uses the GPU when torch sees a CUDA device, else the
CPU through Vulkan: SAPIEN needs a newer lavapipe than Debian 12's, which `make lavapipe` unpacks
into `.venv/lavapipe/` and these envs select (VK_ICD_FILENAMES) unless a driver is already chosen.
The tasks here need no asset downloads; nothing touches the network.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import gymnasium
import numpy as np

from pipeline.envs.registry import EnvEntry, register
from pipeline.envs.variants import TRAIN, random_colors, variant_rng
from pipeline.errors import UserError

VARIANTS = (TRAIN, "object_color", "table_color", "lighting", "camera")
CAMERAS = ("hand_camera", "base_camera")
CONTROL_MODE = "pd_ee_delta_pos"
ROBOT = "panda_wristcam"
TASKS = {
    "PickCube-v1": "pick up a cube and hold it at a goal position",
    "PushCube-v1": "push a cube onto a target on the table",
    "StackCube-v1": "stack one cube on another",
    "PullCube-v1": "pull a cube back onto a target",
    "PokeCube-v1": "use a peg to push a cube onto a target",
    "LiftPegUpright-v1": "stand a lying peg upright",
    "PlaceSphere-v1": "put a sphere into a small bin",
    "RollBall-v1": "roll a ball onto a target",
}
LAVAPIPE_ICD = Path(sys.prefix) / "lavapipe" / "lvp_icd.json"
# How SAPIEN fails without a usable driver: no device (e.g. Mesa 22's lavapipe), or no driver at all.
_NO_VULKAN = ("Failed to find a supported physical device", "ErrorIncompatibleDriver")
# Actors of ManiSkill's table scene; every other actor is one of the task's objects.
_TABLE, _GROUND = "table-workspace", "ground"
# Device name -> an empty render system that keeps SAPIEN's renderer alive (see `_keep_renderer`).
_RENDERERS: dict[str, Any] = {}
# How far the camera variant moves each camera (metres, per axis of the camera's own frame).
_CAMERA_SHIFT = {"hand_camera": 0.03, "base_camera": 0.1}

for _task, _description in TASKS.items():
    register(EnvEntry(id=f"maniskill/{_task}", suite="maniskill", variants=VARIANTS,
                      factory="pipeline.envs.maniskill:ManiSkillEnv", kwargs={"task": _task},
                      description=f"ManiSkill 3 {_task}: {_description}"))


class ManiSkillEnv(gymnasium.Env):
    metadata = {"render_modes": ["rgb_array"]}
    episodic = False   # no task here can fail, and success does not end an episode

    def __init__(self, task: str, variant: str = TRAIN, variant_seed: int = 0, frame_size: int = 64,
                 action_repeat: int | None = None, camera: int | str | None = None, fast_render: bool = False,
                 step_frames: bool = True):
        self.camera = camera_name(camera)
        self.frame_size, self.step_frames = frame_size, step_frames
        self.action_repeat = action_repeat or 1
        self._variant, self._variant_seed = variant, variant_seed
        self._env = _make(task, frame_size)
        self.time_limit = math.ceil(self._env._max_episode_steps / self.action_repeat)   # agent steps (its TimeLimitWrapper)
        space = self._env.unwrapped.single_action_space
        self.action_space = gymnasium.spaces.Box(space.low, space.high, dtype=np.float32)
        self._prepare_scene()
        self.state_keys = {name: values.size for name, values in _state_parts(self._env.unwrapped.get_obs())}
        self.observation_space = gymnasium.spaces.Dict({
            "image": gymnasium.spaces.Box(0, 255, (frame_size, frame_size, 3), np.uint8),
            "state": gymnasium.spaces.Box(-np.inf, np.inf, (sum(self.state_keys.values()),), np.float32),
        })

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        raw, info = self._env.reset(seed=seed)
        if info["reconfigure"]:  # ManiSkill rebuilt the scene: choose the camera and set the look again
            self._prepare_scene()
            raw = self._env.unwrapped.get_obs()
        return self._observation(raw), {}

    def step(self, action):
        reward = 0.0
        for _ in range(self.action_repeat):
            raw, step_reward, _, truncated, info = self._env.step(np.asarray(action, np.float32))
            reward += float(step_reward)
            if truncated:
                break
        observation = self._observation(raw)
        if not self.step_frames:
            del observation["image"]   # the sensors render inside ManiSkill's step: nothing to save
        return observation, reward, False, bool(truncated), {"success": bool(info["success"])}

    def render(self) -> np.ndarray:
        return self._observation(self._env.unwrapped.get_obs())["image"]

    def _prepare_scene(self) -> None:
        scene = self._env.unwrapped.scene
        for name in [name for name in scene.sensors if name != self.camera]:
            del scene.sensors[name]  # a camera that is not observed is not rendered either
        apply_variant(scene, self._variant, self._variant_seed, self.camera)

    def _observation(self, raw: dict) -> dict[str, np.ndarray]:
        image = raw["sensor_data"][self.camera]["rgb"][0].cpu().numpy()
        state = np.concatenate([values for _, values in _state_parts(raw)])
        return {"image": image, "state": state}

    def close(self):
        self._env.close()


def camera_name(camera: int | str | None) -> str:
    """`None` -> the wrist camera; an index into CAMERAS or a camera's name -> that name."""
    if camera is None:
        return CAMERAS[0]
    if isinstance(camera, int) and 0 <= camera < len(CAMERAS):
        return CAMERAS[camera]
    if camera in CAMERAS:
        return camera
    raise UserError(f"unknown ManiSkill camera {camera!r}; valid cameras: "
                    f"{', '.join(f'{name} ({i})' for i, name in enumerate(CAMERAS))}")


def _make(task: str, frame_size: int) -> gymnasium.Env:
    import torch

    gpu = torch.cuda.is_available()
    if not gpu:
        _select_lavapipe()
    try:
        import mani_skill.envs  # noqa: F401  (registers ManiSkill's tasks with gymnasium)
        from mani_skill.utils.logging_utils import logger
    except ModuleNotFoundError as error:
        raise UserError(f"ManiSkill cannot be imported ({error}); install the extra: "
                        "pip install -e '.[maniskill]'") from None

    # ManiSkill warns that PickCube & co. were not tuned for the wrist-camera Panda: see the docstring.
    logger.setLevel("ERROR")
    try:
        env = gymnasium.make(task, obs_mode="rgb+state_dict", control_mode=CONTROL_MODE, robot_uids=ROBOT,
                             sim_backend="cpu", render_backend="gpu" if gpu else "cpu",
                             sensor_configs={"width": frame_size, "height": frame_size})
    except RuntimeError as error:
        if not any(sign in str(error) for sign in _NO_VULKAN):
            raise
        raise UserError(f"ManiSkill found no usable Vulkan driver ({error}); without a GPU, run "
                        "`make lavapipe` (installs Mesa 25's CPU driver into .venv/lavapipe)") from None
    _keep_renderer(env.unwrapped.scene.sub_scenes[0].render_system.device)
    return env


def _keep_renderer(device) -> None:
    """SAPIEN drops its Vulkan renderer with the last scene that uses it, and building it again
    costs ~10 s on lavapipe (shader compilation): an empty render system keeps it for the process."""
    import sapien

    if str(device) not in _RENDERERS:
        _RENDERERS[str(device)] = sapien.render.RenderSystem(device)


def _select_lavapipe() -> None:
    """Point the Vulkan loader at `make lavapipe`'s driver, unless a driver is chosen already.
    The loader reads this when SAPIEN first creates its renderer, in this process."""
    if LAVAPIPE_ICD.is_file() and not {"VK_ICD_FILENAMES", "VK_DRIVER_FILES"} & os.environ.keys():
        os.environ["VK_ICD_FILENAMES"] = str(LAVAPIPE_ICD)


def _state_parts(raw: dict) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 values) of the state observation: the robot's (`agent`), then the task's (`extra`)."""
    def flatten(tree: dict, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}/")
            else:
                yield prefix + key, value[0].cpu().numpy().astype(np.float32).reshape(-1)

    for group in ("agent", "extra"):
        yield from flatten(raw[group])


def apply_variant(scene, variant: str, seed: int, camera: str) -> None:
    """Change how the scene looks, in place; `train` leaves it as the task builds it."""
    if variant == TRAIN:
        return
    import sapien

    rng = variant_rng(variant, seed)
    if variant == "object_color":
        for name, actor in scene.actors.items():
            if name not in (_TABLE, _GROUND):
                for material in _materials(actor):
                    material.base_color = [*random_colors(rng, 1)[0], 1.0]
    elif variant == "table_color":
        color = random_colors(rng, 1)[0]
        for material in _materials(scene.actors[_TABLE]):
            material.base_color_texture = None  # the wood texture would hide the colour
            material.base_color = [*color, 1.0]
    elif variant == "lighting":
        scene.ambient_light = rng.uniform(0.05, 0.6, size=3).tolist()
        for light in _directional_lights(scene):
            light.color = rng.uniform(0.3, 1.2, size=3).tolist()
    elif variant == "camera":
        render_camera = scene.sensors[camera].camera
        render_camera.set_fovy(render_camera.fovy * rng.uniform(0.8, 1.25))
        shift = sapien.Pose(p=rng.uniform(-1.0, 1.0, size=3) * _CAMERA_SHIFT[camera])
        render_camera.set_local_pose(render_camera.get_local_pose().sp * shift)
    else:
        raise ValueError(f"ManiSkill has no variant {variant!r}")


def _materials(actor) -> Iterator[Any]:
    """The render materials of every part of an actor's visual shapes (`_objs` holds the actor's
    SAPIEN entities; ManiSkill's domain-randomisation guide reaches materials this way)."""
    import sapien

    for entity in actor._objs:
        body = entity.find_component_by_type(sapien.render.RenderBodyComponent)
        for shape in body.render_shapes:
            yield from (part.material for part in shape.parts)


def _directional_lights(scene) -> Iterator[Any]:
    import sapien

    for sub_scene in scene.sub_scenes:
        for entity in sub_scene.entities:
            yield from (component for component in entity.components
                        if isinstance(component, sapien.render.RenderDirectionalLightComponent))

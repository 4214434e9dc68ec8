"""ManiSkill 2 (`maniskill2/<Task>-v0`: LiftCube, PickCube, StackCube), the paper's version.

mani-skill2 0.5.3 needs numpy < 2 and sapien 2, which cannot live beside pvr-pipe's numpy 2
(zarr 3) or ManiSkill 3's sapien 3. So it runs in its own virtualenv, `.venv/maniskill2` (made by
`make maniskill2-env`), in a worker process (`maniskill2_worker.py`) that `ManiSkill2Env`
starts on first use and talks to over pipes: JSON for commands and numbers, .npy bytes for
arrays (version-neutral, unlike pickles). The worker ends when the env is closed or collected,
or when this process dies (its stdin closes).

Conventions, as for ManiSkill 3 (`maniskill.py`): the `pd_ee_delta_pose` controller (7 numbers
in [-1, 1]: end-effector position and rotation deltas, gripper), as ManiSkill 2's own pixel
baselines use; action repeat 1; ManiSkill 2's `normalized_dense` reward; 20 Hz control and 200
control steps per episode, then a truncation. Success does not end an episode (it is in
`info["success"]`) and no task here can fail, so no step is a terminal. Frames come from the
wrist camera `hand_camera` (the default; the paper used a wrist camera) or the fixed
`base_camera`, square, `frame_size` pixels; only the chosen camera is rendered. `fast_render`
has no effect: ManiSkill 2 renders without shadows already.

State (`state_keys`): the task's state observation flattened in ManiSkill 2's order: robot joint
positions and velocities (9 each: 7 arm joints, 2 fingers), robot base pose, then the task's
poses and offsets. A pose is position (3) and quaternion w, x, y, z (4).

Rendering: with an NVIDIA GPU, its Vulkan driver. Without, Mesa's lavapipe (`make lavapipe`'s
Mesa 25 in `.venv/lavapipe`, unless a driver is chosen already: Debian 12's own is too old)
through a Vulkan layer (`vulkan_layer/`, built into `.venv/maniskill2`) that removes the one
device extension sapien 2 requests but lavapipe lacks (it shares semaphores with CUDA).
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from pipeline.envs.registry import EnvEntry, register
from pipeline.envs.variants import TRAIN, random_colors, variant_rng
from pipeline.errors import UserError

VARIANTS = (TRAIN, "object_color", "floor_color", "lighting", "camera")
CAMERAS = ("hand_camera", "base_camera")
CONTROL_MODE = "pd_ee_delta_pose"
ACTION_DIM = 7
TIME_LIMIT = 200     # mani-skill2 0.5.3 registers its cube tasks with max_episode_steps=200
_ROBOT_STATE = {"qpos": 9, "qvel": 9, "base_pose": 7}
STATE_KEYS = {
    "LiftCube-v0": {**_ROBOT_STATE, "tcp_pose": 7, "obj_pose": 7, "tcp_to_obj_pos": 3},
    "PickCube-v0": {**_ROBOT_STATE, "tcp_pose": 7, "goal_pos": 3, "tcp_to_goal_pos": 3, "obj_pose": 7,
                    "tcp_to_obj_pos": 3, "obj_to_goal_pos": 3},
    "StackCube-v0": {**_ROBOT_STATE, "tcp_pose": 7, "cubeA_pose": 7, "cubeB_pose": 7, "tcp_to_cubeA_pos": 3,
                     "tcp_to_cubeB_pos": 3, "cubeA_to_cubeB_pos": 3},
}
SETUP_TARGET = "make maniskill2-env"
WORKER_VENV = Path(sys.prefix) / "maniskill2"  # beside the project's own packages, in .venv
WORKER_PYTHON = WORKER_VENV / "bin" / "python"
WORKER_SCRIPT = Path(__file__).with_name("maniskill2_worker.py")
LAVAPIPE_ICD = Path(sys.prefix) / "lavapipe" / "lvp_icd.json"
VULKAN_LAYER = "VK_LAYER_PVRPIPE_drop_external_semaphore_fd"
VULKAN_LAYER_MANIFEST = WORKER_VENV / "vulkan_layer" / "VkLayer_PVRPIPE_drop_external_semaphore_fd.json"
# The wrist camera sits against the gripper: moved back (-x, -z of its mount) or widened much,
# it sees the inside of the hand. The base camera looks at the scene from 0.7 m.
_CAMERA_SHIFT = {"hand_camera": ([0.0, -0.02, 0.0], [0.02, 0.02, 0.02]), "base_camera": ([-0.1] * 3, [0.1] * 3)}
_CAMERA_FOV_SCALE = {"hand_camera": (0.8, 1.1), "base_camera": (0.8, 1.25)}

for _task in STATE_KEYS:
    register(EnvEntry(id=f"maniskill2/{_task}", suite="maniskill2", variants=VARIANTS,
                      factory="pipeline.envs.maniskill2:ManiSkill2Env", kwargs={"task": _task},
                      description=f"ManiSkill 2 {_task} (Panda arm, {CONTROL_MODE}; own virtualenv)"))


class ManiSkill2Env(gymnasium.Env):
    metadata = {"render_modes": ["rgb_array"]}
    episodic = False   # no task here can fail, and success does not end an episode

    def __init__(self, task: str, variant: str = TRAIN, variant_seed: int = 0, frame_size: int = 64,
                 action_repeat: int | None = None, camera: int | str | None = None, fast_render: bool = False,
                 step_frames: bool = True):
        self.frame_size, self.step_frames = frame_size, step_frames
        self.action_repeat = action_repeat or 1
        self.time_limit = math.ceil(TIME_LIMIT / self.action_repeat)   # agent steps
        self.camera = camera_name(camera)
        self.state_keys = dict(STATE_KEYS[task])
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self.observation_space = gymnasium.spaces.Dict({
            "image": gymnasium.spaces.Box(0, 255, (frame_size, frame_size, 3), np.uint8),
            "state": gymnasium.spaces.Box(-np.inf, np.inf, (sum(self.state_keys.values()),), np.float32),
        })
        self._config = {"task": task, "control_mode": CONTROL_MODE, "camera": self.camera,
                        "frame_size": frame_size, "look": look(variant, variant_seed, self.camera)}
        self._worker: Worker | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        _, arrays = self._call({"command": "reset", "seed": seed})
        return arrays, {}

    def step(self, action):
        action = np.asarray(action, np.float32).reshape(ACTION_DIM)
        header, arrays = self._call({"command": "step", "action": action.tolist(), "repeat": self.action_repeat,
                                     "frame": self.step_frames})
        return arrays, header["reward"], False, header["truncated"], header["info"]

    def render(self) -> np.ndarray:
        return self._call({"command": "render"})[1]["image"]

    def close(self):
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def _call(self, request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if self._worker is None:
            self._worker = Worker(self._config)
            self._check(self._worker.description)
        return self._worker.call(request)

    def _check(self, description: dict[str, Any]) -> None:
        """The worker's env must match what this env promised before it started."""
        state_keys = [(name, size) for name, size in description["state_keys"]]
        if (state_keys != list(self.state_keys.items()) or description["action_dim"] != ACTION_DIM
                or description["max_episode_steps"] != TIME_LIMIT):
            raise RuntimeError(f"ManiSkill 2 {self._config['task']} does not match its documented layout: "
                               f"state {state_keys}, {description['action_dim']} actions, "
                               f"{description['max_episode_steps']} steps an episode")


def camera_name(camera: int | str | None) -> str:
    """A camera by name, or by its index in CAMERAS; the wrist camera by default."""
    if camera is None:
        return CAMERAS[0]
    if isinstance(camera, int) and 0 <= camera < len(CAMERAS):
        return CAMERAS[camera]
    if camera in CAMERAS:
        return camera
    raise UserError(f"unknown camera {camera!r} for ManiSkill 2; valid cameras: "
                    f"{', '.join(CAMERAS)} (or their indices 0-{len(CAMERAS) - 1})")


def look(variant: str, seed: int, camera: str) -> dict[str, Any]:
    """The variant's scene parameters as plain numbers, for the worker; `train` changes nothing."""
    if variant == TRAIN:
        return {}
    rng = variant_rng(variant, seed)
    if variant == "object_color":
        return {"object_colors": random_colors(rng, 2).tolist()}
    if variant == "floor_color":
        return {"floor_color": random_colors(rng, 1)[0].tolist()}
    if variant == "lighting":
        return {"ambient_light": rng.uniform(0.0, 0.6, size=3).tolist(),
                "light_colors": rng.uniform(0.2, 1.0, size=(2, 3)).tolist()}
    if variant == "camera":
        low, high = _CAMERA_SHIFT[camera]
        return {"camera_fov_scale": float(rng.uniform(*_CAMERA_FOV_SCALE[camera])),
                "camera_offset": rng.uniform(low, high).tolist()}
    raise ValueError(f"ManiSkill 2 has no variant {variant!r}")


class Worker:
    """The worker process serving one env; see `maniskill2_worker.py` for the protocol."""

    def __init__(self, config: dict[str, Any]):
        if not WORKER_PYTHON.exists():
            raise UserError(f"ManiSkill 2 runs in its own virtualenv, which is missing ({WORKER_VENV}); "
                            f"run `{SETUP_TARGET}`")
        environment = os.environ | render_environment()
        self._stderr = tempfile.TemporaryFile()  # shown only if the worker dies
        # A session of its own: Ctrl-C reaches only this process, which then closes the worker.
        self._process = subprocess.Popen(
            [str(WORKER_PYTHON), "-I", str(WORKER_SCRIPT), json.dumps(config)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, env=environment, start_new_session=True)
        self._finalizer = weakref.finalize(self, _stop_process, self._process, self._stderr)
        try:
            self.description = self._receive()[0]
        except RuntimeError as error:
            self.stop()
            if "rendering device" in str(error):
                raise UserError(f"ManiSkill 2 found no Vulkan device to render with ({error}); without a GPU, "
                                f"run `{SETUP_TARGET}` (Mesa 25's lavapipe and a Vulkan layer)") from None
            raise

    def call(self, request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        body = json.dumps(request).encode()
        try:
            self._process.stdin.write(struct.pack(">I", len(body)) + body)
            self._process.stdin.flush()
        except BrokenPipeError:
            self._exited()
        return self._receive()

    def stop(self) -> None:
        self._finalizer()

    def _receive(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        header = json.loads(self._read_body())
        arrays = {name: np.load(io.BytesIO(self._read_body()), allow_pickle=False) for name in header.pop("arrays")}
        if "error" in header:
            raise RuntimeError(f"ManiSkill 2 worker: {header['error']}")
        return header, arrays

    def _read_body(self) -> bytes:
        prefix = self._process.stdout.read(4)
        if len(prefix) < 4:
            self._exited()
        return self._process.stdout.read(struct.unpack(">I", prefix)[0])

    def _exited(self):
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-20:]
        raise RuntimeError("\n".join(["the ManiSkill 2 worker has exited; its last words:", *tail]))


def _stop_process(process: subprocess.Popen, stderr) -> None:
    """Close the worker's stdin (it exits at end of input); kill it if it does not."""
    try:
        process.stdin.close()
    except BrokenPipeError:
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()
    stderr.close()


def render_environment() -> dict[str, str]:
    """Environment variables for the worker to render: none with an NVIDIA GPU; on a CPU,
    lavapipe (unless a driver is chosen already) and the layer that lets sapien 2 use it."""
    if any(Path("/dev").glob("nvidia[0-9]*")):
        return {}
    if not VULKAN_LAYER_MANIFEST.is_file():
        raise UserError(f"ManiSkill 2 needs a Vulkan layer to render on a CPU, which is missing "
                        f"({VULKAN_LAYER_MANIFEST}); run `{SETUP_TARGET}`")
    environment = {"VK_LAYER_PATH": str(VULKAN_LAYER_MANIFEST.parent), "VK_INSTANCE_LAYERS": VULKAN_LAYER,
                   "SAPIEN_DISABLE_RAY_TRACING": "1"}
    if LAVAPIPE_ICD.is_file() and not {"VK_ICD_FILENAMES", "VK_DRIVER_FILES"} & os.environ.keys():
        environment["VK_ICD_FILENAMES"] = str(LAVAPIPE_ICD)
    return environment

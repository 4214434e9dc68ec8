"""Serves one ManiSkill 2 env to `pipeline/envs/maniskill2.py` over this process's stdin/stdout.

mani-skill2 0.5.3 needs numpy < 2 and sapien 2, so it runs in its own virtualenv
(`.venv/maniskill2`, made by `make maniskill2-env`) as this standalone script: it imports only
the standard library, numpy and mani_skill2, never pvr-pipe.

Usage: `python -I maniskill2_worker.py CONFIG_JSON`, where the config holds the task, control
mode, camera, frame size and the look (plain numbers; absent keys keep ManiSkill 2's defaults):
`object_colors`, `floor_color`, `ambient_light` with `light_colors`, `camera_fov_scale` with
`camera_offset`.

Protocol: every message is a 4-byte big-endian length and a body. A request is one JSON body
(`{"command": "reset", "seed": 3}`, `step` with `action` and `repeat`, or `render`). A reply is
a JSON body naming its arrays, then one body per array: .npy bytes, which numpy 1 and 2 both
read (pickles would not cross the versions). The first reply describes the env, or is
`{"error": ...}` when it cannot be built. The worker exits when its stdin closes: when the env
is closed, or its process dies.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
from typing import Any, BinaryIO

import numpy as np

STATE_OBS_MODE = "state_dict"  # the task's state observation, before ManiSkill 2 flattens it


def main() -> int:
    config = json.loads(sys.argv[1])
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the simulator prints goes to stderr, never into the replies
    requests = sys.stdin.buffer
    try:
        server = EnvServer(config)
        description = server.describe()
    except Exception as error:  # reported to the parent, which raises it
        send(replies, {"error": f"{type(error).__name__}: {error}"})
        return 1
    send(replies, description)
    while (request := receive(requests)) is not None:
        try:
            header, arrays = server.handle(request)
        except Exception as error:
            header, arrays = {"error": f"{type(error).__name__}: {error}"}, {}
        send(replies, header, arrays)
    server.close()
    return 0


def send(stream: BinaryIO, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
    arrays = arrays or {}
    bodies = [json.dumps({**header, "arrays": list(arrays)}).encode()]
    for array in arrays.values():
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        bodies.append(buffer.getvalue())
    stream.write(b"".join(struct.pack(">I", len(body)) + body for body in bodies))
    stream.flush()


def receive(stream: BinaryIO) -> dict[str, Any] | None:
    """The next request, or None when the parent has closed the pipe (or died)."""
    prefix = stream.read(4)
    if len(prefix) < 4:
        return None
    return json.loads(stream.read(struct.unpack(">I", prefix)[0]))


class EnvServer:
    def __init__(self, config: dict[str, Any]):
        import mani_skill2.envs  # noqa: F401  (registers the tasks)
        from mani_skill2.utils.registration import REGISTERED_ENVS

        spec = REGISTERED_ENVS[config["task"]]
        self.max_episode_steps = spec.max_episode_steps
        self.camera_name = config["camera"]
        env_class = with_look(spec.cls, config["look"], self.camera_name)
        size = config["frame_size"]
        # Only the colour image of one camera is rendered, at the frame size.
        self.env = env_class(obs_mode=STATE_OBS_MODE, control_mode=config["control_mode"],
                             camera_cfgs={"width": size, "height": size, "texture_names": ("Color",)})
        if self.camera_name not in self.env._cameras:
            raise ValueError(f"{config['task']} has no camera {self.camera_name!r}")

    def describe(self) -> dict[str, Any]:
        return {"action_dim": int(np.prod(self.env.action_space.shape)), "max_episode_steps": self.max_episode_steps,
                "state_keys": [[name, int(np.size(value))] for name, value in leaves(self.env.get_obs())]}

    def handle(self, request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        command = request["command"]
        if command == "reset":
            observation, _ = self.env.reset(seed=request["seed"])
            return {}, self.observation(observation)
        if command == "step":
            return self.step(np.asarray(request["action"], np.float32), request["repeat"], request.get("frame", True))
        if command == "render":
            return {}, {"image": self.render()}
        raise ValueError(f"unknown command {command!r}")

    def step(self, action: np.ndarray, repeat: int, frame: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """`repeat` control steps; success does not end the episode, only the time limit does."""
        reward, truncated = 0.0, False
        for _ in range(repeat):
            observation, step_reward, _, _, info = self.env.step(action)
            reward += float(step_reward)
            truncated = self.env.elapsed_steps >= self.max_episode_steps
            if truncated:
                break
        header = {"reward": reward, "truncated": truncated,
                  "info": {key: np.asarray(value).item() for key, value in info.items()}}
        return header, self.observation(observation, frame)

    def observation(self, state_dict: dict, frame: bool = True) -> dict[str, np.ndarray]:
        state = np.concatenate([np.asarray(value, np.float32).ravel() for _, value in leaves(state_dict)])
        return {"image": self.render(), "state": state} if frame else {"state": state}

    def render(self) -> np.ndarray:
        self.env.update_render()
        camera = self.env._cameras[self.camera_name]
        camera.take_picture()
        rgba = camera.get_images()["Color"]
        return np.clip(rgba[..., :3] * 255, 0, 255).astype(np.uint8)  # as ManiSkill 2's RGBD wrapper

    def close(self) -> None:
        self.env.close()


def leaves(tree: dict) -> list[tuple[str, Any]]:
    """(name, value) of a nested observation dict in order; names are the leaf keys."""
    items = []
    for key, value in tree.items():
        items += leaves(value) if isinstance(value, dict) else [(key, value)]
    return items


def with_look(env_class: type, look: dict[str, Any], camera_name: str) -> type:
    """`env_class` whose scene is built with `look`'s colours, lights and camera; a change of
    look only, so the same seed gives the same physical state whatever the look."""

    class EnvWithLook(env_class):
        def _load_actors(self):
            self._cubes_built = 0
            super()._load_actors()

        def _build_cube(self, *args, **kwargs):
            # Materials are fixed once the scene is built, so colours are given at creation.
            if "object_colors" in look:
                colors = look["object_colors"]
                kwargs["color"] = colors[self._cubes_built % len(colors)]
            self._cubes_built += 1
            return super()._build_cube(*args, **kwargs)

        def _add_ground(self, altitude=0.0, render=True):
            if "floor_color" not in look or not render:
                return super()._add_ground(altitude, render)
            material = self._renderer.create_material()  # ManiSkill 2's ground, another colour
            material.base_color = [*look["floor_color"], 1.0]
            material.metallic, material.roughness, material.specular = 0.0, 0.9, 0.8
            return self._scene.add_ground(altitude=altitude, render=True, render_material=material)

        def _setup_lighting(self):
            if "ambient_light" not in look:
                return super()._setup_lighting()
            self._scene.set_ambient_light(look["ambient_light"])
            # ManiSkill 2's two directional lights (no shadows by default), other colours
            for direction, color in zip(([1, 1, -1], [0, 0, -1]), look["light_colors"]):
                self._scene.add_directional_light(direction, color)

        def _configure_cameras(self):
            super()._configure_cameras()
            if "camera_fov_scale" in look:
                camera = self._camera_cfgs[camera_name]
                camera.fov *= look["camera_fov_scale"]
                camera.p = (np.asarray(camera.p) + look["camera_offset"]).tolist()

    EnvWithLook.__name__ = env_class.__name__
    return EnvWithLook


if __name__ == "__main__":
    sys.exit(main())

"""Collection throughput vs the bare simulator, measured side by side in one process.

ratio = steps/s of `pvr-pipe collect` (in-process, one worker: building the env, policy, frame
encoding, shard writing, hashing, manifest) / steps/s of the bare env loop (building the env and
the suite's own step and render calls, no pvr-pipe code, rendering the same single camera), for
the same env, frame size, episodes and step cap; steps are those played (an episode may end
before the cap). Repeats are interleaved and the medians compared. Also reports
`--workers 2` against the same bare rate. Suites: dmc/, miniworld/, maniskill/ (ManiSkill 3) and
maniskill2/ (its bare loop runs in its own virtualenv, the same way the worker does). Prints one
JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

from pipeline.config import CollectConfig  # noqa: E402
from pipeline.envs import make_env  # noqa: E402
from stages import collect  # noqa: E402


def bare_dmc_rate(env_id: str, frame_size: int, episodes: int, steps: int) -> float:
    """dm_control alone: action repeat 2, one render per agent step, as collection does."""
    from dm_control import suite

    domain, task = env_id.removeprefix("dmc/").split("-", 1)
    start = time.perf_counter()
    env = suite.load(domain, task, task_kwargs={"random": 0})
    spec = env.action_spec()
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        env.reset()
        env.physics.render(frame_size, frame_size, camera_id=0)
        for _ in range(steps):
            action = rng.uniform(spec.minimum, spec.maximum)
            for _ in range(2):
                env.step(action)
            env.physics.render(frame_size, frame_size, camera_id=0)
    return episodes * steps / (time.perf_counter() - start)


def bare_miniworld_rate(env_id: str, frame_size: int, episodes: int, steps: int) -> float:
    """Miniworld alone: its gymnasium env observing through the agent's camera."""
    import gymnasium
    import pyglet

    pyglet.options["headless"] = True
    import miniworld  # noqa: F401  (registers MiniWorld-*)

    def build():
        with contextlib.redirect_stdout(io.StringIO()):  # its GL fallback notes would corrupt the JSON
            return gymnasium.make(f"MiniWorld-{env_id.removeprefix('miniworld/')}", obs_width=frame_size,
                                  obs_height=frame_size, window_width=frame_size, window_height=frame_size)

    return _timed_gym_loop(build, episodes, steps)


def bare_maniskill_rate(env_id: str, frame_size: int, episodes: int, steps: int) -> float:
    """ManiSkill 3 alone, rendering only the wrist camera (as the env observes it)."""
    import gymnasium

    from pipeline.envs import maniskill

    maniskill._select_lavapipe()
    import mani_skill.envs  # noqa: F401

    def build():
        env = gymnasium.make(env_id.removeprefix("maniskill/"), obs_mode="rgb", control_mode=maniskill.CONTROL_MODE,
                             robot_uids=maniskill.ROBOT, sim_backend="cpu", render_backend="cpu",
                             sensor_configs={"width": frame_size, "height": frame_size})
        del env.unwrapped.scene.sensors["base_camera"]
        return env

    return _timed_gym_loop(build, episodes, steps, single_action_space=True)


MANISKILL2_LOOP = """
import json, sys
import numpy as np
import mani_skill2.envs
from mani_skill2.utils.registration import REGISTERED_ENVS
task, size, episodes, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
spec = REGISTERED_ENVS[task]
env = spec.cls(obs_mode="state_dict", control_mode="pd_ee_delta_pose",
               camera_cfgs={"width": size, "height": size, "texture_names": ("Color",)})
camera = env._cameras["hand_camera"]

def render():
    env.update_render()
    camera.take_picture()
    return camera.get_images()["Color"]

rng = np.random.default_rng(0)
played = 0
for episode in range(episodes):
    env.reset(seed=episode)
    render()
    for _ in range(min(steps, spec.max_episode_steps)):
        env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        render()
        played += 1
print(json.dumps(played))
"""


def bare_maniskill2_rate(env_id: str, frame_size: int, episodes: int, steps: int) -> float:
    """ManiSkill 2 alone, in its own virtualenv with the same Vulkan set-up as its worker."""
    import subprocess

    from pipeline.envs import maniskill2

    start = time.perf_counter()   # its own interpreter, as the collect worker has
    result = subprocess.run([str(maniskill2.WORKER_PYTHON), "-c", MANISKILL2_LOOP, env_id.removeprefix("maniskill2/"),
                             str(frame_size), str(episodes), str(steps)], capture_output=True, text=True,
                            env=os.environ | maniskill2.render_environment(), check=True)
    return int(result.stdout.strip().splitlines()[-1]) / (time.perf_counter() - start)


def bare_gym_rate(env_id: str, frame_size: int, episodes: int, steps: int) -> float:
    """Envs built into pvr-pipe (toy): the env is its own bare loop."""
    return _timed_gym_loop(lambda: make_env(env_id, frame_size=frame_size), episodes, steps)


def _timed_gym_loop(build, episodes: int, steps: int, single_action_space: bool = False) -> float:
    start = time.perf_counter()
    env = build()
    space = env.unwrapped.single_action_space if single_action_space else env.action_space
    space.seed(0)
    played = 0
    for episode in range(episodes):
        env.reset(seed=episode)
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(space.sample())
            played += 1
            if terminated or truncated:
                break
    return played / (time.perf_counter() - start)


BARE_LOOPS = {"dmc": bare_dmc_rate, "miniworld": bare_miniworld_rate, "maniskill": bare_maniskill_rate,
              "maniskill2": bare_maniskill2_rate, "toy": bare_gym_rate}


def collect_rate(env_id: str, frame_size: int, episodes: int, steps: int, workers: int,
                 image_format: str) -> tuple[float, int]:
    """(steps/s, steps played)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CollectConfig(env=env_id, frame_size=frame_size, episodes=episodes, max_steps=steps,
                            episodes_per_shard=max(1, episodes // workers), workers=workers,
                            image_format=image_format, out=Path(tmp) / "ds")
        start = time.perf_counter()
        manifest = collect.run(cfg, show_progress=False)
        return manifest.steps / (time.perf_counter() - start), manifest.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["dmc/cartpole-swingup", "miniworld/OneRoom-v0",
                                                      "maniskill/PickCube-v1", "maniskill2/PickCube-v0"])
    parser.add_argument("--cases", nargs="+", default=["64:png", "224:png", "224:jpeg"],
                        help="FRAME_SIZE:IMAGE_FORMAT pairs")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=250, help="agent steps per episode")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    results = []
    for env_id in args.envs:
        bare = BARE_LOOPS[env_id.split("/")[0]]
        for case in args.cases:
            size_text, image_format = case.split(":")
            size = int(size_text)
            rates = {"bare": [], "collect": [], "collect_2_workers": []}
            for _ in range(args.repeats):
                rates["bare"].append(bare(env_id, size, args.episodes, args.steps))
                rate, played = collect_rate(env_id, size, args.episodes, args.steps, 1, image_format)
                rates["collect"].append(rate)
                rates["collect_2_workers"].append(collect_rate(env_id, size, args.episodes, args.steps,
                                                               2, image_format)[0])
            median = {k: statistics.median(v) for k, v in rates.items()}
            results.append({
                "env": env_id, "frame_size": size, "image_format": image_format,
                "episodes_per_run": args.episodes, "max_steps": args.steps, "steps_played_per_run": played,
                "repeats": args.repeats,
                "bare_steps_per_s": round(median["bare"], 1),
                "collect_steps_per_s": round(median["collect"], 1),
                "collect_2_workers_steps_per_s": round(median["collect_2_workers"], 1),
                "ratio": round(median["collect"] / median["bare"], 3),
                "ratio_2_workers": round(median["collect_2_workers"] / median["bare"], 3),
                "target_ratio": 0.90,
                "runs_steps_per_s": {k: [round(rate, 1) for rate in v] for k, v in rates.items()},
            })
    print(json.dumps({"benchmark": "collect", "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()

"""Miniworld suite: frames, state, variants, determinism, episode ends, and a run through the CLI."""

import json
import math

import numpy as np
import pytest

from conftest import pvr_pipe
from pipeline.envs import env_ids, get_entry, make_env
from pipeline.envs.miniworld import ENVS
from pipeline.errors import UserError

TURN_LEFT, TURN_RIGHT, FORWARD = 0, 1, 2
# 24 turns of 15 degrees look all around the room, then a few steps forward.
LOOK_AROUND = [TURN_LEFT] * 24 + [FORWARD] * 4


def rollout(env_id, variant="train", variant_seed=0, seed=1, actions=LOOK_AROUND, **options):
    env = make_env(env_id, variant, variant_seed, **options)
    observation, _ = env.reset(seed=seed)
    frames, states = [observation["image"]], [observation["state"]]
    for action in actions:
        observation, *_ = env.step(action)
        frames.append(observation["image"])
        states.append(observation["state"])
    return np.stack(frames), np.stack(states)


def test_registry_lists_the_miniworld_envs():
    for task in ("OneRoom", "FourRooms", "PickupObjects", "Sidewalk"):
        assert f"miniworld/{task}-v0" in env_ids()
    assert "sky_color" in get_entry("miniworld/Sidewalk-v0").variants
    assert "sky_color" not in get_entry("miniworld/OneRoom-v0").variants  # a ceiling hides the sky


@pytest.mark.parametrize("frame_size", [64, 96])
def test_frames_have_the_requested_size_and_the_state_its_layout(frame_size):
    env = make_env("miniworld/OneRoom-v0", frame_size=frame_size)
    observation, _ = env.reset(seed=0)
    assert observation["image"].shape == (frame_size, frame_size, 3) and observation["image"].dtype == np.uint8
    assert observation["image"].std() > 0  # a real picture, not a blank frame
    assert env.state_keys == {"agent_position": 2, "agent_direction": 2, "entity_positions": 2,
                              "entity_present": 1}
    assert observation["state"].dtype == np.float32 and observation["state"].shape == (7,)
    assert env.action_repeat == 1 and env.action_space.n == 3


@pytest.mark.parametrize("task", sorted(ENVS))
def test_each_env_builds_and_steps(task):
    env = make_env(f"miniworld/{task}-v0")
    observation, _ = env.reset(seed=0)
    size = sum(env.state_keys.values())
    for action in range(env.action_space.n):
        observation, reward, terminated, truncated, _ = env.step(action)
        assert observation["image"].shape == (64, 64, 3)
        assert observation["state"].shape == (size,) and np.isfinite(observation["state"]).all()
        assert np.isfinite(reward)


@pytest.mark.parametrize("env_id", ["miniworld/OneRoom-v0", "miniworld/PickupObjects-v0"])
def test_variants_change_pixels_not_the_world(env_id):
    train_frames, train_states = rollout(env_id)
    assert np.array_equal(rollout(env_id)[0], train_frames)
    for variant in get_entry(env_id).variants[1:]:
        frames, states = rollout(env_id, variant)
        # clearly visible somewhere on the way round (a distant box is a few pixels)
        assert np.abs(frames.astype(int) - train_frames).mean(axis=(1, 2, 3)).max() > 2.0, variant
        np.testing.assert_array_equal(states, train_states)
        # deterministic given name and seed; another variant seed gives another look
        assert np.array_equal(rollout(env_id, variant)[0], frames), variant
        assert not np.array_equal(rollout(env_id, variant, variant_seed=1)[0], frames), variant


def test_same_seed_same_rollout_other_seed_other_start():
    frames, states = rollout("miniworld/FourRooms-v0", seed=7)
    again, states_again = rollout("miniworld/FourRooms-v0", seed=7)
    assert np.array_equal(frames, again) and np.array_equal(states, states_again)
    other, other_states = rollout("miniworld/FourRooms-v0", seed=8, actions=[])
    assert not np.array_equal(other[0], frames[0]) and not np.array_equal(other_states[0], states[0])


def test_two_envs_in_one_process_each_draw_their_own_scene():
    alone, _ = rollout("miniworld/OneRoom-v0", seed=3)
    env = make_env("miniworld/OneRoom-v0")
    observation, _ = env.reset(seed=3)
    make_env("miniworld/FourRooms-v0", "wall_texture").reset(seed=3)  # compiles its own scene
    frames = [observation["image"]] + [env.step(action)[0]["image"] for action in LOOK_AROUND]
    assert np.array_equal(np.stack(frames), alone)


def test_state_drives_a_scripted_agent_to_the_goal_a_true_terminal():
    """The state's layout is what it says: steering by it reaches the box, which ends the task."""
    env = make_env("miniworld/OneRoom-v0")
    observation, _ = env.reset(seed=5)
    for step in range(180):
        x, z, cos_dir, sin_dir, box_x, box_z, _ = observation["state"]
        # Miniworld faces (cos dir, -sin dir) in (x, z); turning left increases dir.
        error = math.remainder(math.atan2(-(box_z - z), box_x - x) - math.atan2(sin_dir, cos_dir), math.tau)
        action = FORWARD if abs(error) < math.radians(10) else TURN_LEFT if error > 0 else TURN_RIGHT
        observation, reward, terminated, truncated, _ = env.step(action)
        if terminated:
            break
    assert terminated and not truncated and reward > 0.5, step


@pytest.mark.parametrize("action_repeat", [1, 3])
def test_time_limit_is_a_truncation_counted_in_miniworld_steps(action_repeat):
    env = make_env("miniworld/OneRoom-v0", action_repeat=action_repeat)
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(TURN_LEFT)  # turning never reaches the box
        assert not terminated
        steps += 1
    assert steps == math.ceil(180 / action_repeat)  # OneRoom's limit: 180 Miniworld steps
    assert env.time_limit == steps and env.episodic is True


def test_unknown_variant_and_other_cameras_are_user_errors():
    with pytest.raises(UserError, match="wall_texture"):
        make_env("miniworld/OneRoom-v0", "sepia")
    with pytest.raises(UserError, match="object_color"):
        make_env("miniworld/OneRoom-v0", "sky_color")
    with pytest.raises(UserError, match="camera"):
        make_env("miniworld/OneRoom-v0", camera=1)


@pytest.mark.slow  # three CLI runs, each importing torch: about 30 s on a 2-core machine
def test_collect_encode_train_through_the_cli(tmp_path):
    data, store, run = tmp_path / "oneroom", tmp_path / "pixels.zarr", tmp_path / "run"
    collected = pvr_pipe("collect", "--env", "miniworld/OneRoom-v0", "--episodes", 2, "--max-steps", 20,
                         "--seed", 0, "--out", data, "--quiet")
    assert collected.returncode == 0, collected.stderr
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["action_dim"] == 3 and manifest["frames"] == 42  # one-hot actions, 21 frames each
    encoded = pvr_pipe("encode", "--model", "pixels", "--dataset", data, "--out", store, "--quiet")
    assert encoded.returncode == 0, encoded.stderr
    trained = pvr_pipe("train", "--store", store, "--world-model", "tdmpc", "--preset", "xs", "--updates", 5,
                       "--set", "batch_size=8", "--out", run, "--quiet")
    assert trained.returncode == 0, trained.stderr
    assert any(run.iterdir())

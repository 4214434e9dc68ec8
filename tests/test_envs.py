import numpy as np
import pytest

from pipeline.envs import env_ids, get_entry, make_env
from pipeline.errors import UserError

PAPER_DMC_TASKS = ["cartpole-swingup", "cheetah-run", "walker-walk", "reacher-easy", "finger-spin",
                   "pendulum-swingup"]


def first_frame(env_id, variant="train", variant_seed=0, seed=1, **options):
    env = make_env(env_id, variant, variant_seed, **options)
    observation, _ = env.reset(seed=seed)
    return observation


def test_registry_lists_dmc_tasks_and_toy_env():
    ids = env_ids()
    for task in PAPER_DMC_TASKS:
        assert f"dmc/{task}" in ids
    assert "toy/pointmass-reach" in ids
    assert len(get_entry("dmc/walker-walk").variants) >= 4  # train + at least three OOD


@pytest.mark.parametrize("task", PAPER_DMC_TASKS)
def test_dmc_observation_has_frame_and_state(task):
    env = make_env(f"dmc/{task}", frame_size=64)
    observation, _ = env.reset(seed=0)
    assert observation["image"].shape == (64, 64, 3) and observation["image"].dtype == np.uint8
    assert observation["state"].dtype == np.float32
    assert observation["state"].shape == (sum(env.state_keys.values()),)
    assert env.action_repeat == 2
    observation, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert np.isfinite(reward) and not terminated and not truncated
    assert observation["image"].std() > 0  # a real picture, not a blank frame


@pytest.mark.parametrize("env_id", ["dmc/cartpole-swingup", "toy/pointmass-reach", "miniworld/OneRoom-v0"])
def test_without_step_frames_steps_observe_the_same_states_and_no_frame(env_id):
    def states(step_frames):
        env = make_env(env_id, step_frames=step_frames)
        env.action_space.seed(0)
        observation, _ = env.reset(seed=3)
        assert observation["image"].std() > 0   # reset still renders: evaluate saves each look's first frame
        seen = [observation["state"]]
        for _ in range(5):
            observation = env.step(env.action_space.sample())[0]
            assert ("image" in observation) == step_frames
            seen.append(observation["state"])
        return np.stack(seen)

    np.testing.assert_array_equal(states(False), states(True))


def test_dmc_renders_224_pixels_for_pvrs():
    assert first_frame("dmc/cartpole-swingup", frame_size=224)["image"].shape == (224, 224, 3)


@pytest.mark.parametrize("env_id", ["dmc/cartpole-swingup", "toy/pointmass-reach"])
def test_variants_change_pixels_and_train_does_not(env_id):
    train = first_frame(env_id)["image"].astype(int)
    assert np.array_equal(first_frame(env_id)["image"], train)
    for variant in get_entry(env_id).variants[1:]:
        frame = first_frame(env_id, variant)
        assert np.abs(frame["image"].astype(int) - train).mean() > 0.2, variant
        # the look changes, the world does not
        np.testing.assert_array_equal(frame["state"], first_frame(env_id)["state"])
        # deterministic given name and seed; another variant seed gives another look
        assert np.array_equal(first_frame(env_id, variant)["image"], frame["image"])
        assert not np.array_equal(first_frame(env_id, variant, variant_seed=1)["image"], frame["image"])


@pytest.mark.parametrize("env_id", ["dmc/walker-walk", "toy/pointmass-reach"])
def test_same_seed_same_rollout_other_seed_other_start(env_id):
    def rollout(seed):
        env = make_env(env_id)
        observation, _ = env.reset(seed=seed)
        env.action_space.seed(0)
        frames, rewards = [observation["image"]], []
        for _ in range(5):
            observation, reward, *_ = env.step(env.action_space.sample())
            frames.append(observation["image"])
            rewards.append(reward)
        return np.stack(frames), rewards

    frames, rewards = rollout(7)
    again, rewards_again = rollout(7)
    assert np.array_equal(frames, again) and rewards == rewards_again
    assert not np.array_equal(rollout(8)[0][0], frames[0])


def test_unknown_env_and_variant_name_the_valid_ones():
    with pytest.raises(UserError, match="dmc/cartpole-swingup"):
        make_env("dmc/cartpole-swingdown")
    with pytest.raises(UserError, match="lighting"):
        make_env("dmc/cartpole-swingup", "sepia")


@pytest.mark.slow
def test_dmc_episode_is_1000_env_steps_then_truncated():
    env = make_env("dmc/pendulum-swingup", fast_render=True)
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        steps += 1
    assert steps * env.action_repeat == 1000
    assert env.time_limit == steps and env.episodic is False   # what collect records for the discount


def test_actions_are_stored_as_vectors_and_map_back_to_the_env():
    import gymnasium

    from pipeline.envs.actions import action_dim, to_env_action, to_stored
    from pipeline.policies import RandomPolicy

    discrete = gymnasium.spaces.Discrete(3)
    assert action_dim(discrete) == 3
    assert to_stored(2, discrete).tolist() == [0, 0, 1]
    assert to_env_action(np.array([0.1, 0.7, -0.2]), discrete) == 1
    policy = RandomPolicy(discrete)
    policy.reset(0)
    actions = {policy.act({}) for _ in range(50)}
    assert actions == {0, 1, 2}
    box = gymnasium.spaces.Box(np.array([0.0, -2.0]), np.array([1.0, 2.0]), dtype=np.float32)
    assert action_dim(box) == 2
    np.testing.assert_allclose(to_stored(np.array([0.5, 2.0]), box), [0.0, 1.0])
    np.testing.assert_allclose(to_env_action(np.array([0.0, 1.0]), box), [0.5, 2.0])
    np.testing.assert_allclose(to_env_action(np.array([-3.0, 0.0]), box), [0.0, 0.0])   # clipped to the box


def test_look_grid_draws_every_look_of_each_env(tmp_path):
    from PIL import Image

    from tests.conftest import pvr_pipe

    out = tmp_path / "looks.png"
    result = pvr_pipe("envs", "--grid", out, "--env", "toy/pointmass-reach", "--frame-size", 32, "--seed", 4)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.width == 32 * len(get_entry("toy/pointmass-reach").variants)
        grid = np.asarray(image.convert("RGB"))
    frames = [grid[14:46, 32 * i:32 * (i + 1)] for i in range(len(get_entry("toy/pointmass-reach").variants))]
    np.testing.assert_array_equal(frames[0], first_frame("toy/pointmass-reach", seed=4, frame_size=32)["image"])
    assert all(np.abs(f.astype(int) - frames[0]).mean() > 0.2 for f in frames[1:])

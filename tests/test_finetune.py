"""Online fine-tuning and evaluation: the frozen encoder in the loop, resumption, looks, agents collecting."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import PVR_PIPE, assert_user_error, collect_toy, pvr_pipe, write_linear_system_store
from pipeline.config import EncodeConfig, FinetuneConfig, TrainConfig
from pipeline.encoders.store_encoder import StoreEncoder
from pipeline.envs import make_env
from pipeline.storage.checkpoint import load_checkpoint
from pipeline.storage.embedding_store import read_store
from pipeline.storage.manifest import read_manifest
from pipeline.storage.runs import load_agent
from stages import encode, finetune, train

SHORT_EPISODES = dict(episodes=6, max_steps=25, episodes_per_shard=3, seed=5)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A toy dataset, its `pixels` store and a briefly trained offline tdmpc run."""
    root = tmp_path_factory.mktemp("online")
    collect_toy(root / "toy", **SHORT_EPISODES)
    store = encode.run(EncodeConfig(model="pixels", dataset=str(root / "toy"), out=str(root / "pixels.zarr")),
                       show_progress=False)
    run_dir = train.run(TrainConfig(store=store, world_model="tdmpc", preset="xs", updates=20, out=root / "run"),
                        show_progress=False)[0]
    return root, run_dir


@pytest.fixture(scope="module")
def toy_pixels(tmp_path_factory):
    """40 random-policy episodes of 50 steps of the toy env, and their `pixels` store."""
    root = tmp_path_factory.mktemp("learning")
    collect_toy(root / "toy", episodes=40, max_steps=50, episodes_per_shard=20, seed=0)
    return encode.run(EncodeConfig(model="pixels", dataset=str(root / "toy"), out=str(root / "pixels.zarr")),
                      show_progress=False)


# Offline updates and settings for a CPU budget of about a minute each. TD-MPC2's published loss
# weights (consistency 20, reward 0.1) need far longer before its pixel encoder stops collapsing.
LEARNING = {"dreamer": (800, {"lr": 1e-3, "batch_size": 8, "sequence_length": 16, "warmup": 0}),
            "tdmpc": (600, {"lr": 1e-3, "batch_size": 32, "consistency_coef": 2.0, "reward_coef": 1.0})}


@pytest.mark.slow   # 4 min each on 2 cores: the default run must stay under 20 min (`make test-slow`)
@pytest.mark.parametrize("world_model", ["dreamer", "tdmpc"])
def test_a_short_finetune_beats_the_random_policy_by_a_clear_margin(toy_pixels, tmp_path, world_model):
    updates, settings = LEARNING[world_model]
    run_dir = train.run(TrainConfig(store=toy_pixels, world_model=world_model, preset="xs", settings=settings,
                                    updates=updates, seed=0, out=tmp_path / "run"), show_progress=False)[0]
    out, = finetune.run(FinetuneConfig(run=run_dir, env_steps=200, eval_every=100, eval_episodes=4, seed=0),
                       show_progress=False)
    rows = (out / "live/plots/metrics/eval/return.tsv").read_text().splitlines()[1:]
    returns = [float(row.split("\t")[1]) for row in rows]
    random = yaml.safe_load((out / "finetune.yaml").read_text())["random_return"]
    assert returns[-1] > 1.4 * random, (returns, random)


def finetune_args(run_dir, out, steps=50):
    return ["finetune", "--run", run_dir, "--out", out, "--env-steps", steps, "--eval-every", 25,
            "--eval-episodes", 1, "--train-ratio", 0.2, "--quiet", "--threads", 1]


@pytest.mark.parametrize("model", ["pixels", "efficientnet-lite0"])
def test_the_online_encoder_gives_the_cached_features_for_the_same_frames(tmp_path, model):
    collect_toy(tmp_path / "toy", episodes=2, max_steps=10, episodes_per_shard=2, seed=2)
    store = encode.run(EncodeConfig(model=model, dataset=str(tmp_path / "toy"), out=str(tmp_path / "s.zarr"),
                                    batch_size=8), show_progress=False)
    arrays, starts, attrs = read_store(store)
    manifest = read_manifest(tmp_path / "toy")
    # Replay episode 1 in a fresh env from its recorded seed and actions: the same frames, rendered online.
    env = make_env("toy/pointmass-reach")
    frames = [env.reset(seed=manifest.shards[0].episode_seeds[1])[0]["image"]]
    first, last = starts[1], len(arrays["action"])
    for action in arrays["action"][first:last - 1]:
        frames.append(env.step(action)[0]["image"])
    online = StoreEncoder(attrs)(np.stack(frames))
    cached = arrays[attrs["feature"]][first:last]
    assert online.dtype == cached.dtype and online.shape == cached.shape
    np.testing.assert_array_equal(online, cached)


def test_finetune_writes_a_learning_curve_an_online_store_and_an_agent_that_acts(toy_run):
    root, run_dir = toy_run
    out, = finetune.run(FinetuneConfig(run=run_dir, env_steps=50, eval_every=25, eval_episodes=1, train_ratio=0.2),
                       show_progress=False)
    assert out == run_dir / "finetune"
    curve = (out / "live/plots/metrics/eval/return.tsv").read_text().splitlines()
    assert curve[0] == "step\treturn" and [row.split("\t")[0] for row in curve[1:]] == ["0", "25", "50"]
    progress = load_checkpoint(out / "agent.safetensors")["progress"]
    assert progress["env_steps"] == 50 and progress["updates"] == 10 and progress["episodes"] == 2
    online, starts, attrs = read_store(str(out / "online.zarr"))
    assert len(starts) == 2 and len(online["pixels"]) == 52 and attrs["encoder"] == "pixels"
    assert online["is_first"][starts].all() and online["reward"][starts].sum() == 0
    info = yaml.safe_load((out / "finetune.yaml").read_text())
    assert info["identity"]["start"]["run"] == ".." and info["random_return"] > 0   # relative to the fine-tune
    agent, _, name = load_agent(out)
    assert name.startswith(f"agent:{out}") and agent.action_dim == 2


SLOW_COMPILE = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.mark.parametrize("world_model,compiled", [("tdmpc", False), pytest.param("tdmpc", True, marks=SLOW_COMPILE),
                                                  pytest.param("dreamer", True, marks=SLOW_COMPILE)])
def test_finetune_resumes_after_sigkill_as_if_never_interrupted(toy_run, tmp_path, world_model, compiled):
    root, run_dir = toy_run
    if world_model == "dreamer":
        run_dir = train.run(TrainConfig(store=str(root / "pixels.zarr"), world_model="dreamer", preset="xs", updates=2,
                                        settings={"sequence_length": 8, "batch_size": 4}, out=tmp_path / "offline"),
                            show_progress=False)[0]
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    flags = ["--compile"] if compiled else []
    process = subprocess.Popen([PVR_PIPE, *map(str, finetune_args(run_dir, killed, steps=100)), *flags],
                               stderr=subprocess.PIPE)
    deadline = time.time() + (900 if compiled else 180)
    while not (killed / "agent.safetensors").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = load_checkpoint(killed / "agent.safetensors")["progress"]["env_steps"]
    assert 0 < interrupted_at < 100
    shutil.rmtree(killed / "timing")      # untracked by DVC: a pull of the run leaves it out
    assert pvr_pipe(*finetune_args(run_dir, killed, steps=100), *flags, timeout=900).returncode == 0
    assert pvr_pipe(*finetune_args(run_dir, straight, steps=100), *flags, timeout=900).returncode == 0
    assert load_checkpoint(killed / "agent.safetensors")["progress"]["env_steps"] == 100
    # Every file DVC tracks, byte for byte; wall-clock timing lives apart, in timing/.
    assert tracked_files(killed) == tracked_files(straight)
    assert (killed / "timing/plots/metrics/agent_steps_per_s.tsv").is_file()
    assert json.loads((killed / "timing/metrics.json").read_text())["timed_from_step"] == interrupted_at
    assert json.loads((straight / "timing/metrics.json").read_text())["timed_from_step"] == 0


def tracked_files(run_dir):
    return {path.relative_to(run_dir).as_posix(): path.read_bytes() for path in sorted(run_dir.rglob("*"))
            if path.is_file() and path.relative_to(run_dir).parts[0] != "timing"}


@pytest.mark.slow
def test_a_run_directory_works_from_any_folder_and_after_its_workspace_moves(toy_run, tmp_path):
    root, _ = toy_run
    workspace = tmp_path / "workspace"
    shutil.copytree(root / "pixels.zarr", workspace / "data" / "pixels.zarr")
    trained = pvr_pipe("train", "--store", "data/pixels.zarr", "--world-model", "tdmpc", "--preset", "xs",
                       "--updates", 10, "--quiet", "--out", "runs/toy", cwd=workspace)
    assert trained.returncode == 0, trained.stderr
    moved = tmp_path / "moved"
    shutil.move(workspace, moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = moved / "runs" / "toy"
    result = pvr_pipe("evaluate-model", "--run", run_dir, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    result = pvr_pipe(*finetune_args(run_dir, run_dir / "finetune", steps=20), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    result = pvr_pipe("evaluate", "--run", run_dir / "finetune", "--episodes", 1, "--max-steps", 10, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert not list(elsewhere.iterdir())      # nothing written where it was started


def test_evaluate_plays_each_look_with_that_looks_pixels(toy_run):
    root, run_dir = toy_run
    result = pvr_pipe("evaluate", "--run", run_dir, "--variant", "floor_color", "--episodes", 2)
    assert result.returncode == 0, result.stderr
    out = run_dir / "evaluation"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"about", "random", "train", "floor_color"}
    assert metrics["train"]["ood_score"] == 1.0 and len(metrics["floor_color"]["returns"]) == 2
    assert metrics["floor_color"]["model"]["prediction_error"]["mean"] > 0
    # Both looks start from the same state; each saved first frame is exactly what that look renders.
    seed = int(np.random.SeedSequence(0, spawn_key=(2,)).generate_state(2)[0])
    for variant in ("train", "floor_color"):
        rendered = make_env("toy/pointmass-reach", variant).reset(seed=seed)[0]["image"]
        np.testing.assert_array_equal(np.asarray(Image.open(out / "frames" / f"{variant}.png")), rendered)
    train_frame, ood_frame = (np.asarray(Image.open(out / "frames" / f"{v}.png")) for v in ("train", "floor_color"))
    assert np.abs(train_frame.astype(int) - ood_frame.astype(int)).mean() > 5


def test_a_trained_agent_collects_a_new_dataset(toy_run, tmp_path):
    _, run_dir = toy_run
    result = pvr_pipe("collect", "--env", "toy/pointmass-reach", "--policy", f"agent:{run_dir}", "--episodes", 2,
                      "--max-steps", 10, "--out", tmp_path / "by-agent", "--quiet")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "by-agent")
    assert manifest.policy.startswith(f"agent:{run_dir}") and manifest.steps == 20


def test_bad_inputs_give_one_line(toy_run, tmp_path):
    root, run_dir = toy_run
    assert_user_error(pvr_pipe("finetune"), "--run", "--store")
    assert_user_error(pvr_pipe("finetune", "--run", tmp_path), "not a training run")
    linear = write_linear_system_store(tmp_path / "linear.zarr", episodes=2)
    assert_user_error(pvr_pipe("finetune", "--store", linear, "--out", tmp_path / "f"), "re-encode")
    assert_user_error(pvr_pipe("finetune", "--run", run_dir, "--num-envs", "0"), "num_envs")
    assert_user_error(pvr_pipe("finetune", "--run", run_dir, "--world-model", "dreamer", "--out", tmp_path / "f"),
                      "--world-model dreamer contradicts", "tdmpc")
    assert_user_error(pvr_pipe("finetune", "--run", run_dir, "--preset", "s", "--out", tmp_path / "f"),
                      "--preset s contradicts", "xs")
    assert_user_error(pvr_pipe("evaluate", "--run", tmp_path), "holds no agent")
    assert_user_error(pvr_pipe("evaluate", "--run", run_dir, "--variant", "sepia"), "unknown look", "floor_color")
    assert_user_error(pvr_pipe("collect", "--env", "dmc/cartpole-swingup", "--policy", f"agent:{run_dir}",
                               "--out", tmp_path / "c"), "2-d actions", "1-d ones")
    assert not (tmp_path / "f").exists() and not (tmp_path / "c").exists()


def run_suite_through_every_stage(tmp_path, env_id, world_model, settings):
    """collect -> encode (pixels) -> train -> finetune -> evaluate, through the real command."""
    steps = ["--episodes", 3, "--max-steps", 12, "--episodes-per-shard", 3, "--seed", 1]
    commands = [
        ["collect", "--env", env_id, *steps, "--out", tmp_path / "data", "--quiet"],
        ["encode", "--model", "pixels", "--dataset", tmp_path / "data", "--out", tmp_path / "pixels.zarr", "--quiet"],
        ["train", "--store", tmp_path / "pixels.zarr", "--world-model", world_model, "--preset", "xs", "--updates", 3,
         *(arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")), "--out", tmp_path / "run",
         "--quiet"],
        ["finetune", "--run", tmp_path / "run", "--env-steps", 12, "--eval-every", 12, "--eval-episodes", 1,
         "--train-ratio", 0.25, "--quiet"],
        ["evaluate", "--run", tmp_path / "run/finetune", "--episodes", 1],
    ]
    for command in commands:
        result = pvr_pipe(*command, timeout=600)
        assert result.returncode == 0, (command[0], result.stderr[-2000:])
    return json.loads((tmp_path / "run/finetune/evaluation/metrics.json").read_text())


@pytest.mark.parametrize("world_model", ["dreamer", pytest.param("tdmpc", marks=pytest.mark.slow)])
def test_discrete_miniworld_runs_through_finetune_and_evaluate(tmp_path, world_model):
    settings = {"sequence_length": 8, "batch_size": 4} if world_model == "dreamer" else {"batch_size": 8}
    metrics = run_suite_through_every_stage(tmp_path, "miniworld/OneRoom-v0", world_model, settings)
    assert {"train", "wall_texture", "floor_texture", "lighting", "object_color"} <= set(metrics)
    online = read_store(str(tmp_path / "run/finetune/online.zarr"))[0]
    assert set(np.unique(online["action"][online["is_last"] == 0])) <= {0.0, 1.0}   # one-hot, as collected
    assert (online["action"][online["is_last"] == 0].sum(1) == 1).all()


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["maniskill/PickCube-v1", "maniskill2/PickCube-v0"])
def test_maniskill_runs_through_finetune_and_evaluate(tmp_path, env_id):
    metrics = run_suite_through_every_stage(tmp_path, env_id, "tdmpc", {"batch_size": 8})
    assert {"train", "object_color", "lighting", "camera"} <= set(metrics)
    assert all(len(metrics[look]["returns"]) == 1 for look in ("train", "lighting"))

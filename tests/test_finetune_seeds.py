"""`pvr-pipe finetune --seed 0 --seed 1 ...`: tdmpc's seeds learn online as one batched model in
lockstep, dreamer's one after another; each seed's directory holds the bytes of the seed
fine-tuned alone."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from conftest import PVR_PIPE, assert_user_error, collect_toy, pvr_pipe
from pipeline.config import EncodeConfig, FinetuneConfig, TrainConfig
from pipeline.storage.checkpoint import load_checkpoint
from stages import encode, finetune, train


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """A toy `pixels` store and offline tdmpc runs of seeds 0 and 1 on it (`runs/seed<k>`)."""
    root = tmp_path_factory.mktemp("seeds")
    collect_toy(root / "toy", episodes=6, max_steps=25, episodes_per_shard=3, seed=5)
    store = encode.run(EncodeConfig(model="pixels", dataset=str(root / "toy"), out=str(root / "pixels.zarr")),
                       show_progress=False)
    train.run(TrainConfig(store=store, world_model="tdmpc", preset="xs", updates=20, seed=[0, 1],
                          out=root / "runs" / "seed{seed}"), show_progress=False)
    return store, root / "runs"


def finetune_args(*more):
    return ["finetune", "--env-steps", 50, "--eval-every", 25, "--eval-episodes", 1, "--train-ratio", 0.2,
            "--quiet", "--threads", 1, *more]


def tracked_files(run_dir) -> dict[str, bytes]:
    """What DVC tracks of a fine-tune: everything but timing/."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.relative_to(run_dir).parts[0] != "timing"}


def test_killed_batched_seeds_resume_to_the_bytes_of_each_seed_fine_tuned_alone(toy_runs, tmp_path):
    _, runs = toy_runs
    together = tmp_path / "together" / "seed{seed}"
    args = finetune_args("--run", runs / "seed{seed}", "--seed", 0, "--seed", 1, "--out", together,
                         "--set", "batch_size=16")
    process = subprocess.Popen([PVR_PIPE, *map(str, args)], stderr=subprocess.PIPE)
    last = tmp_path / "together" / "seed1" / "agent.safetensors"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(last)["progress"]["env_steps"]
    assert 0 < killed_at < 50
    resumed = pvr_pipe(*args, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.split() == [str(tmp_path / "together" / "seed0"), str(tmp_path / "together" / "seed1")]
    # At the same depth as the batched directories: finetune.yaml records paths relative to its own.
    alone_dir = tmp_path / "alone" / "seed1"
    assert pvr_pipe(*finetune_args("--run", runs / "seed1", "--seed", 1, "--out", alone_dir, "--set", "batch_size=16"),
                    timeout=900).returncode == 0
    batched, alone = tracked_files(tmp_path / "together" / "seed1"), tracked_files(alone_dir)
    assert {"agent.safetensors", "finetune.yaml", "live/plots/metrics/eval/return.tsv",
            "live/plots/metrics/train/loss.tsv", "online.zarr/zarr.json"} <= set(alone)
    assert batched == alone
    other = tracked_files(tmp_path / "together" / "seed0")
    assert other["agent.safetensors"] != alone["agent.safetensors"]
    assert load_checkpoint(tmp_path / "together" / "seed0" / "agent.safetensors")["progress"]["env_steps"] == 50


def test_seeds_from_nothing_act_at_random_on_their_own_generators_then_learn_as_one_model(toy_runs, tmp_path,
                                                                                           monkeypatch):
    store, _ = toy_runs
    group_sizes = []
    batched = finetune._finetune

    def spy(cfg, group, show_progress):
        group_sizes.append(len(group))
        return batched(cfg, group, show_progress)

    monkeypatch.setattr(finetune, "_finetune", spy)
    options = dict(store=store, world_model="tdmpc", preset="xs", offline_fraction=0.5, seed_steps=30, env_steps=60,
                   num_envs=2, eval_every=30, eval_episodes=3, train_ratio=0.5, threads=1,
                   settings={"batch_size": 16})
    outs = finetune.run(FinetuneConfig(**options, seed=[2, 4], out=tmp_path / "together" / "s{seed}"),
                        show_progress=False)
    assert group_sizes == [2]
    finetune.run(FinetuneConfig(**options, seed=4, out=tmp_path / "alone" / "s4"), show_progress=False)
    assert group_sizes == [2, 1]
    alone = tracked_files(tmp_path / "alone" / "s4")
    assert tracked_files(outs[1]) == alone
    assert tracked_files(outs[0])["agent.safetensors"] != alone["agent.safetensors"]
    progress = load_checkpoint(outs[1] / "agent.safetensors")["progress"]
    assert progress["env_steps"] >= 60 and progress["updates"] > 0


def test_dreamer_seeds_learn_one_after_another_as_each_would_alone(toy_runs, tmp_path):
    store, _ = toy_runs
    args = finetune_args("--store", store, "--world-model", "dreamer", "--preset", "xs", "--set", "batch_size=4",
                         "--set", "sequence_length=8", "--env-steps", 30, "--train-ratio", 0.1)
    assert pvr_pipe(*args, "--seed", 0, "--seed", 1, "--out", tmp_path / "together" / "s{seed}").returncode == 0
    assert pvr_pipe(*args, "--seed", 1, "--out", tmp_path / "alone" / "s1").returncode == 0
    assert tracked_files(tmp_path / "together" / "s1") == tracked_files(tmp_path / "alone" / "s1")


def test_bad_seed_lists_give_one_line(toy_runs, tmp_path):
    _, runs = toy_runs
    assert_user_error(pvr_pipe(*finetune_args("--run", runs / "seed0", "--seed", 0, "--seed", 1)),
                      "would share the directory", "{seed}")
    assert_user_error(pvr_pipe(*finetune_args("--run", runs / "seed0", "--seed", 3, "--seed", 3,
                                              "--out", tmp_path / "s{seed}")), "names a seed twice")
    assert not (tmp_path / "s3").exists()

"""`pvr-pipe train --seed 0 --seed 1 ...`: several seeds in one batched model, each in its own
run directory with the bytes of the seed trained alone."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from conftest import PVR_PIPE, assert_user_error, pvr_pipe, write_linear_system_store
from pipeline.storage.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def linear_store(tmp_path_factory):
    return write_linear_system_store(tmp_path_factory.mktemp("linear") / "linear.zarr")


def train_args(store, *more):
    return ["train", "--store", store, "--world-model", "tdmpc", "--preset", "xs", "--set", "lr=1e-3",
            "--log-every", "30", "--checkpoint-every", "40", "--quiet", "--threads", "1", *more]


def tracked_files(run_dir) -> dict[str, bytes]:
    """What DVC tracks of a run: everything but timing/."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and not p.relative_to(run_dir).as_posix().startswith("timing/")}


def test_killed_batched_seeds_resume_to_the_bytes_of_each_seed_trained_alone(linear_store, tmp_path):
    together = tmp_path / "together" / "seed{seed}"
    args = [PVR_PIPE, *map(str, train_args(linear_store, "--seed", 3, "--seed", 5, "--updates", 130,
                                           "--out", together))]
    process = subprocess.Popen(args, stderr=subprocess.PIPE)
    first = tmp_path / "together" / "seed5" / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(first)["update"]
    assert 0 < killed_at < 130
    resumed = pvr_pipe(*train_args(linear_store, "--seed", 3, "--seed", 5, "--updates", 130, "--out", together))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.split() == [str(tmp_path / "together" / "seed3"), str(tmp_path / "together" / "seed5")]
    # At the same depth as the batched runs: run.yaml records the store's path relative to the run.
    alone_dir = tmp_path / "alone" / "seed5"
    assert pvr_pipe(*train_args(linear_store, "--seed", 5, "--updates", 130, "--out", alone_dir)).returncode == 0
    batched, alone = tracked_files(tmp_path / "together" / "seed5"), tracked_files(alone_dir)
    assert {"checkpoint.safetensors", "run.yaml", "live/metrics.json", "live/plots/metrics/train/loss.tsv"} <= set(alone)
    assert batched == alone
    other = tracked_files(tmp_path / "together" / "seed3")
    assert other["checkpoint.safetensors"] != alone["checkpoint.safetensors"]
    assert load_checkpoint(tmp_path / "together" / "seed3" / "checkpoint.safetensors")["update"] == 130


def test_seeds_at_different_updates_train_as_groups_and_dreamer_seeds_one_by_one(linear_store, tmp_path):
    runs = tmp_path / "runs" / "seed{seed}"
    assert pvr_pipe(*train_args(linear_store, "--seed", 1, "--updates", 60, "--out", runs)).returncode == 0
    result = pvr_pipe(*train_args(linear_store, "--seed", 1, "--seed", 2, "--updates", 80, "--out", runs))
    assert result.returncode == 0, result.stderr
    for seed in (1, 2):
        assert pvr_pipe(*train_args(linear_store, "--seed", seed, "--updates", 80,
                                    "--out", tmp_path / "alone" / f"seed{seed}")).returncode == 0
        assert tracked_files(tmp_path / "runs" / f"seed{seed}") == tracked_files(tmp_path / "alone" / f"seed{seed}")
    dreamer = ["train", "--store", linear_store, "--world-model", "dreamer", "--preset", "xs", "--set",
               "sequence_length=16", "--set", "batch_size=4", "--updates", "3", "--quiet", "--threads", "1"]
    assert pvr_pipe(*dreamer, "--seed", 0, "--seed", 1, "--out", tmp_path / "dreamer" / "s{seed}").returncode == 0
    assert pvr_pipe(*dreamer, "--seed", 1, "--out", tmp_path / "dreamer-alone" / "s1").returncode == 0
    assert tracked_files(tmp_path / "dreamer" / "s1") == tracked_files(tmp_path / "dreamer-alone" / "s1")


def test_bad_seed_lists_give_one_line(linear_store, tmp_path):
    assert_user_error(pvr_pipe(*train_args(linear_store, "--seed", 0, "--seed", 1, "--out", tmp_path / "one")),
                      "one directory for 2 seeds", "{seed}")
    assert_user_error(pvr_pipe(*train_args(linear_store, "--seed", 2, "--seed", 2, "--out", tmp_path / "s{seed}")),
                      "names a seed twice")
    assert not list(tmp_path.iterdir())

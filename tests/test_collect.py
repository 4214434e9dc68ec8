import os
import signal
import subprocess
import time

import numpy as np
import pytest

from pipeline.storage.manifest import read_manifest
from pipeline.envs import make_env
from pipeline.policies import RandomPolicy
from pipeline.rollout import collect_episode
from pipeline.storage.trajectory_reader import iter_episodes
from stages.collect import episode_seeds
from tests.conftest import PVR_PIPE, assert_user_error, collect_toy, pvr_pipe, snapshot

DMC = ["--env", "dmc/cartpole-swingup", "--variant", "lighting", "--seed", "11", "--quiet"]
RESUMABLE = DMC + ["--episodes", "6", "--episodes-per-shard", "1", "--max-steps", "30"]


def shard_bytes(root):
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*.tar"))}


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path, toy_dataset):
    collect_toy(tmp_path / "again")
    collect_toy(tmp_path / "parallel", workers=2)
    assert shard_bytes(tmp_path / "again") == shard_bytes(toy_dataset)
    assert shard_bytes(tmp_path / "parallel") == shard_bytes(toy_dataset)
    collect_toy(tmp_path / "other-seed", seed=4)
    assert shard_bytes(tmp_path / "other-seed")["shard-000000.tar"] != shard_bytes(toy_dataset)["shard-000000.tar"]


def test_episode_seeds_are_recorded_and_distinct(toy_dataset):
    manifest = read_manifest(toy_dataset)
    recorded = [s for shard in manifest.shards for s in shard.episode_seeds]
    assert recorded == [env_seed for env_seed, _ in episode_seeds(3, 5)]
    assert len(set(recorded)) == 5


def test_dmc_collection_is_deterministic(tmp_path):
    args = DMC + ["--episodes", "2", "--max-steps", "10"]
    assert pvr_pipe("collect", *args, "--out", tmp_path / "a").returncode == 0
    assert pvr_pipe("collect", *args, "--out", tmp_path / "b", "--workers", "2").returncode == 0
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")


def test_resume_after_sigkill_gives_the_same_bytes(tmp_path):
    killed = tmp_path / "killed"
    process = subprocess.Popen([PVR_PIPE, "collect", *RESUMABLE, "--out", killed],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (killed / "shard-000001.tar").exists():
        assert process.poll() is None and time.time() < deadline, "collection ended before it was killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "manifest.json").exists()  # nothing that looks finished
    assert len(list(killed.glob("shard-*.tar"))) < 6

    done_before = snapshot(killed / "shard-000000.tar")
    result = pvr_pipe("collect", *RESUMABLE, "--out", killed)
    assert result.returncode == 0, result.stderr
    assert snapshot(killed / "shard-000000.tar") == done_before
    assert pvr_pipe("collect", *RESUMABLE, "--out", tmp_path / "straight").returncode == 0
    assert shard_bytes(killed) == shard_bytes(tmp_path / "straight")
    assert read_manifest(killed).shards == read_manifest(tmp_path / "straight").shards
    assert not list(killed.glob("*.partial")) and not (killed / ".progress.json").exists()


def test_rerun_of_a_finished_dataset_writes_nothing(tmp_path):
    collect_toy(tmp_path / "ds")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "ds").iterdir()}
    collect_toy(tmp_path / "ds", workers=2)  # worker count is not part of the dataset's identity
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ds").iterdir()} == before


def test_dmc_episodes_are_stored_exactly(tmp_path):
    collect = pvr_pipe("collect", *DMC, "--episodes", "2", "--max-steps", "10", "--out", tmp_path / "ds")
    assert collect.returncode == 0, collect.stderr
    manifest = read_manifest(tmp_path / "ds")
    stored = next(iter_episodes(tmp_path / "ds"))
    env = make_env("dmc/cartpole-swingup", "lighting")
    fresh = collect_episode(env, RandomPolicy(env.action_space), stored.meta["env_seed"],
                            stored.meta["policy_seed"], max_steps=10)
    np.testing.assert_array_equal(stored.frames, fresh.frames)  # frames encoded while rendering go on
    np.testing.assert_array_equal(stored.state, fresh.state)
    returns = np.array([r for shard in manifest.shards for r in shard.episode_returns])
    assert ((returns >= 0) & (returns <= 20)).all()  # DMC rewards lie in [0, 1] per env step
    assert manifest.state_keys == {"position": 3, "velocity": 2}


@pytest.fixture
def small_disk(tmp_path):
    """A 700 KiB tmpfs (mounting one needs root; skipped where the test may not)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_is_one_line_naming_the_path_and_the_space_needed_and_the_rerun_resumes(small_disk):
    args = ["collect", "--env", "toy/pointmass-reach", "--episodes", "20", "--max-steps", "50",
            "--episodes-per-shard", "5", "--quiet", "--out", small_disk / "ds"]
    assert_user_error(pvr_pipe(*args), "no space left", str(small_disk / "ds" / "shard-"), "MiB free there",
                      "MiB more needed")
    assert not (small_disk / "ds" / "manifest.json").exists()          # nothing that looks complete
    kept = snapshot(small_disk / "ds" / "shard-000000.tar")
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)   # space freed
    assert pvr_pipe(*args).returncode == 0
    assert snapshot(small_disk / "ds" / "shard-000000.tar") == kept
    assert pvr_pipe("info", small_disk / "ds", "--verify").returncode == 0

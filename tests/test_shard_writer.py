"""The shard writer process: same bytes as writing inline, errors reach the parent, no orphans."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.envs import make_env
from pipeline.policies import RandomPolicy
from pipeline.rollout import collect_episode
from pipeline.storage.trajectory_writer import (BackgroundShardWriter, encode_frame, episode_arrays_sample,
                                                episode_key, frames_sample, write_shard)
from tests.conftest import PVR_PIPE


@pytest.fixture(scope="module")
def episodes():
    env = make_env("toy/pointmass-reach")
    return [collect_episode(env, RandomPolicy(env.action_space), seed, seed, max_steps=40) for seed in (1, 2)]


def _write_in_background(path: Path, episodes, image_format: str = "png") -> tuple[str, int]:
    # 41 frames per episode with chunks of 16: full chunks and a part, across episode ends.
    with BackgroundShardWriter(path, image_format, jpeg_quality=90, chunk=16) as writer:
        for i, episode in enumerate(episodes):
            for frame in episode.frames:
                writer.add_frame(frame)
            writer.add_episode(episode_key(i), episode)
        return writer.finish()


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_background_shard_is_the_inline_shard(tmp_path, episodes, image_format):
    background = _write_in_background(tmp_path / "background.tar", episodes, image_format)
    inline = write_shard(tmp_path / "inline.tar", [
        (episode_key(i), episode_arrays_sample(episode)
         | frames_sample([encode_frame(frame, image_format, 90) for frame in episode.frames], image_format))
        for i, episode in enumerate(episodes)])
    assert background == inline
    assert (tmp_path / "background.tar").read_bytes() == (tmp_path / "inline.tar").read_bytes()
    assert not multiprocessing.active_children()


def test_an_error_in_the_writer_is_raised_in_the_parent(tmp_path, episodes):
    with pytest.raises(FileNotFoundError):
        _write_in_background(tmp_path / "missing-dir" / "shard.tar", episodes)
    assert not multiprocessing.active_children()


def test_leaving_without_finish_stops_the_writer_and_leaves_no_shard(tmp_path, episodes):
    with BackgroundShardWriter(tmp_path / "shard.tar") as writer:
        for frame in episodes[0].frames:
            writer.add_frame(frame)
    assert not multiprocessing.active_children()
    assert not (tmp_path / "shard.tar").exists()


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # reaped or a zombie
    except FileNotFoundError:
        return True


def test_the_writer_exits_when_its_parent_is_killed(tmp_path):
    script = ("import multiprocessing, os, signal\n"
              "from pipeline.storage.trajectory_writer import BackgroundShardWriter\n"
              f"writer = BackgroundShardWriter({str(tmp_path / 'shard.tar')!r})\n"
              "print(multiprocessing.active_children()[0].pid, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert parent.returncode == -signal.SIGKILL
    child = int(parent.stdout)
    deadline = time.time() + 10
    while not _gone(child):
        assert time.time() < deadline, "the writer outlived its parent"
        time.sleep(0.1)


def test_ctrl_c_stops_collection_with_one_line_and_it_resumes(tmp_path):
    args = ["collect", "--env", "dmc/cartpole-swingup", "--episodes", "4", "--episodes-per-shard", "1",
            "--max-steps", "30", "--out", str(tmp_path / "ds")]
    process = subprocess.Popen([PVR_PIPE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (tmp_path / "ds" / "shard-000000.tar").exists():
        assert process.poll() is None and time.time() < deadline, "collection ended before Ctrl-C"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal does: the whole process group
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "pvr-pipe: interrupted; rerun the same command to resume"
    assert "Traceback" not in stderr
    resumed = subprocess.run([PVR_PIPE, *args], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert not list((tmp_path / "ds").glob("*.partial"))

import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from pipeline import __version__
from pipeline.envs import make_env
from pipeline.errors import UserError
from pipeline.policies import RandomPolicy
from pipeline.rollout import collect_episode
from pipeline.storage.manifest import read_manifest, sha256_file
from pipeline.storage.trajectory_reader import iter_episodes, verify_dataset
from tests.conftest import collect_toy


def test_manifest_counts_and_hashes(toy_dataset):
    manifest = read_manifest(toy_dataset)
    assert manifest.episodes == 5 and manifest.steps == 5 * 20 and manifest.frames == 5 * 21
    assert [s.name for s in manifest.shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [s.episodes for s in manifest.shards] == [2, 2, 1]
    for shard in manifest.shards:
        path = toy_dataset / shard.name
        assert sha256_file(path) == shard.sha256 and path.stat().st_size == shard.bytes
    assert manifest.env == "toy/pointmass-reach" and manifest.policy == "random"
    # What decides the bytes, never the commit: the same inputs and code give the same manifest at any commit.
    assert manifest.config["seed"] == 3 and manifest.pipeline_version == __version__
    assert "code_version" not in (toy_dataset / "manifest.json").read_text()
    assert sorted(p.name for p in toy_dataset.iterdir()) == ["manifest.json"] + [s.name for s in manifest.shards]


def test_plain_webdataset_and_tarfile_read_the_shards(toy_dataset):
    shard = str(toy_dataset / "shard-000000.tar")
    samples = list(wds.WebDataset(shard, shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == ["ep0000000", "ep0000001"]
    sample = samples[0]
    frames = [sample[k] for k in sorted(k for k in sample if k.startswith("frame."))]
    assert len(frames) == 21 and frames[0].shape == (64, 64, 3) and frames[0].dtype == np.uint8
    assert sample["action.npy"].shape == (21, 2) and sample["reward.npy"].shape == (21,)
    assert sample["state.npy"].shape == (21, 6)
    assert sample["meta.json"]["episode_index"] == 0
    with tarfile.open(shard) as tar:
        names = tar.getnames()
    assert "ep0000000.meta.json" in names and "ep0000001.frame.000020.png" in names


def test_stored_episode_is_the_rollout_in_rlds_convention(toy_dataset):
    """Frames are lossless (PNG) and every step array matches a fresh rollout with the recorded seeds."""
    stored = next(iter_episodes(toy_dataset))
    env = make_env("toy/pointmass-reach")
    fresh = collect_episode(env, RandomPolicy(env.action_space), stored.meta["env_seed"],
                            stored.meta["policy_seed"], max_steps=20)
    np.testing.assert_array_equal(stored.frames, fresh.frames)
    for name in ("action", "reward", "state", "is_first", "is_last", "is_terminal"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(fresh, name))
    assert stored.reward[0] == 0 and not stored.action[-1].any()
    assert stored.is_first.tolist() == [True] + [False] * 20
    assert stored.is_last.tolist() == [False] * 20 + [True]
    assert not stored.is_terminal.any()  # ended by the step cap, not a terminal state
    assert stored.meta["return"] == pytest.approx(float(stored.reward.sum()), rel=1e-6)


def test_jpeg_frames_are_close_to_png(tmp_path, toy_dataset):
    collect_toy(tmp_path / "jpeg", image_format="jpeg", jpeg_quality=95)
    png = next(iter_episodes(toy_dataset)).frames.astype(float)
    jpeg = next(iter_episodes(tmp_path / "jpeg")).frames.astype(float)
    assert png.shape == jpeg.shape
    assert 0 < np.abs(png - jpeg).mean() < 3


def test_a_corrupt_shard_is_named(tmp_path):
    collect_toy(tmp_path / "ds", episodes=2)
    shard = tmp_path / "ds" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="shard-000000.tar"):
        verify_dataset(tmp_path / "ds")
    shard.write_bytes(bytes(data[:3000]))  # truncated mid-member
    with pytest.raises(UserError, match="shard-000000.tar.*corrupt"):
        list(iter_episodes(tmp_path / "ds"))


def test_not_a_dataset(tmp_path):
    with pytest.raises(UserError, match="not a trajectory dataset"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(UserError, match="not a valid trajectory manifest"):
        read_manifest(tmp_path)

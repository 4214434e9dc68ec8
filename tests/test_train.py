"""Offline world-model training and model-quality metrics, on stores whose dynamics are known."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from conftest import PVR_PIPE, assert_user_error, pvr_pipe, write_linear_system_store
from pipeline.config import EvaluateModelConfig, TrainConfig
from pipeline.storage.checkpoint import load_checkpoint, restore_model
from stages import evaluate_model, train
from world_models.replay import Replay, split_episodes

# Short runs: a higher learning rate, and no warm-up for dreamer (its 1000-update warm-up would
# span the whole run); the resume test keeps the warm-up, whose progress must survive the kill.
FAST = {"dreamer": {"lr": 1e-3, "sequence_length": 32, "warmup": 0}, "tdmpc": {"lr": 1e-3}}


@pytest.fixture(scope="module")
def linear_store(tmp_path_factory):
    return write_linear_system_store(tmp_path_factory.mktemp("linear") / "linear.zarr")


def train_run(store, out, world_model, updates, seed=0, **options):
    cfg = TrainConfig(store=str(store), world_model=world_model, preset="xs", settings=FAST[world_model],
                      seed=seed, out=out, updates=updates, log_every=25, checkpoint_every=100, **options)
    return train.run(cfg, show_progress=False)[0]


def losses(run_dir, name="loss"):
    rows = (run_dir / "live/plots/metrics/train" / f"{name}.tsv").read_text().splitlines()[1:]
    return [(int(step), float(value)) for step, value in (row.split("\t") for row in rows)]


@pytest.mark.parametrize("world_model", [pytest.param("dreamer", marks=pytest.mark.slow), "tdmpc"])
def test_world_model_learns_a_known_linear_system(linear_store, tmp_path, world_model):
    run_dir = train_run(linear_store, tmp_path / "run", world_model, updates=300)
    curve = losses(run_dir)
    assert curve[-1][1] < 0.5 * curve[0][1], curve          # it fits the training data
    out = evaluate_model.run(EvaluateModelConfig(run=run_dir, horizon=20))
    metrics = json.loads((out / "metrics.json").read_text())
    quality, error = metrics["train"], metrics["train"]["prediction_error"]
    # Open-loop prediction from actions alone beats holding the last latent by a wide margin.
    assert metrics["about"]["horizon"] == 20 and error["ratio_to_copy_last"] < 0.5, error
    assert quality["episodes"] == "held-out" and quality["frames"] == 2 * 101
    assert quality["probe"]["r2"] > 0.99                      # the embedding is a linear map of the state
    assert quality["reward"]["correlation"] > 0.5, quality["reward"]
    tsv = (out / "prediction_error.tsv").read_text().splitlines()
    assert tsv[0] == "horizon\ttrain\ttrain_copy_last" and len(tsv) == 21


def test_same_seed_same_losses_other_seed_other_losses(linear_store, tmp_path):
    a = losses(train_run(linear_store, tmp_path / "a", "tdmpc", updates=50, seed=1))
    b = losses(train_run(linear_store, tmp_path / "b", "tdmpc", updates=50, seed=1))
    c = losses(train_run(linear_store, tmp_path / "c", "tdmpc", updates=50, seed=2))
    assert a == b and a != c


def test_checkpoint_round_trip_restores_the_same_function(linear_store, tmp_path):
    run_dir = train_run(linear_store, tmp_path / "run", "dreamer", updates=30)
    checkpoint = load_checkpoint(run_dir / "checkpoint.safetensors")
    assert checkpoint["update"] == 30
    model = restore_model(checkpoint).eval()
    again = restore_model(load_checkpoint(run_dir / "checkpoint.safetensors")).eval()
    obs = torch.randn(3, 5, 16)
    torch.testing.assert_close(model.embed(obs), again.embed(obs))
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["model"][key]), key


def test_rerun_of_a_finished_run_writes_nothing_and_more_updates_continue(linear_store, tmp_path):
    run_dir = train_run(linear_store, tmp_path / "run", "tdmpc", updates=50)
    before = (run_dir / "checkpoint.safetensors").read_bytes()
    train_run(linear_store, run_dir, "tdmpc", updates=50)
    assert (run_dir / "checkpoint.safetensors").read_bytes() == before
    train_run(linear_store, run_dir, "tdmpc", updates=75)
    assert load_checkpoint(run_dir / "checkpoint.safetensors")["update"] == 75
    assert [step for step, _ in losses(run_dir)] == [25, 50, 75]


def test_resume_after_sigkill_gives_the_bytes_of_an_uninterrupted_run(linear_store, tmp_path):
    # Checkpoints fall inside logging windows (50 vs 30 updates): the resumed window must log the same mean.
    args = ["train", "--store", linear_store, "--world-model", "dreamer", "--preset", "xs", "--set", "lr=1e-3",
            "--set", "sequence_length=32", "--updates", "210", "--log-every", "30", "--checkpoint-every", "50",
            "--quiet", "--threads", "1"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([PVR_PIPE, *map(str, args), "--out", str(killed)], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)                       # let it run past the checkpoint before the kill
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = load_checkpoint(killed / "checkpoint.safetensors")["update"]
    assert 0 < interrupted_at < 210
    assert pvr_pipe(*args, "--out", killed).returncode == 0
    assert pvr_pipe(*args, "--out", tmp_path / "straight").returncode == 0
    assert load_checkpoint(killed / "checkpoint.safetensors")["update"] == 210
    # Every file DVC tracks, byte for byte (the checkpoint, run.yaml, the loss logs); timing lives apart.
    tracked = {path.relative_to(killed).as_posix() for path in killed.rglob("*") if path.is_file()}
    assert {"checkpoint.safetensors", "run.yaml", "live/metrics.json", "live/plots/metrics/train/loss.tsv",
            "timing/plots/metrics/updates_per_s.tsv"} <= tracked
    for name in sorted(tracked):
        if not name.startswith("timing/"):
            assert (killed / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert [step for step, _ in losses(killed)] == list(range(30, 211, 30))


def test_a_second_train_into_one_run_is_refused_in_one_line(linear_store, tmp_path):
    args = ["train", "--store", linear_store, "--world-model", "tdmpc", "--preset", "xs", "--updates", "300",
            "--quiet", "--threads", "1", "--out", tmp_path / "run"]
    both = [subprocess.Popen([PVR_PIPE, *map(str, args)], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((process.wait(timeout=300), process.stderr.read()) for process in both)
    assert results[0][0] == 0 and results[1][0] == 2, results
    assert len(results[1][1].strip().splitlines()) == 1 and "is being written by" in results[1][1]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")["update"] == 300
    assert not (tmp_path / "run.lock").exists()


def test_replay_windows_stay_inside_episodes_and_stack_repeats_the_first_frame():
    frames = np.arange(10, dtype=np.float32)[:, None]
    arrays = {"embedding": frames, "action": frames + 100, "reward": frames[:, 0], "is_first": np.isin(np.arange(10), [0, 4]),
              "is_terminal": np.zeros(10, bool), "state": frames}
    replay = Replay(arrays, np.array([0, 4]), "embedding")
    assert replay.window_starts(3).tolist() == [0, 1, 4, 5, 6, 7]
    batch = replay.gather(torch.tensor([4]), 3, stack=3)
    assert batch["obs"][0, :, :, 0].tolist() == [[4, 4, 4], [4, 4, 5], [4, 5, 6]]
    assert batch["prev_action"][0, :, 0].tolist() == [0, 104, 105]
    sampled = replay.sample(64, 4, np.random.default_rng(0))
    episode = (sampled["obs"][..., 0] >= 4)
    assert (episode.all(1) | (~episode).all(1)).all()
    assert split_episodes(10, 0.2) == split_episodes(10, 0.2)
    train_ids, held_out = split_episodes(10, 0.2)
    assert len(held_out) == 2 and sorted(train_ids + held_out) == list(range(10))


def test_bad_inputs_give_one_line(linear_store, toy_dataset, tmp_path):
    import zarr

    assert_user_error(pvr_pipe("train", "--store", toy_dataset, "--out", tmp_path / "r"), "not an embedding store")
    hollow = write_linear_system_store(tmp_path / "hollow.zarr", episodes=2)
    del zarr.open_group(str(hollow), mode="r+")["embedding"]
    assert_user_error(pvr_pipe("train", "--store", hollow, "--out", tmp_path / "r"), "lacks arrays", "embedding")
    assert_user_error(pvr_pipe("train", "--store", tmp_path / "missing.zarr"), "not an embedding store")
    short = write_linear_system_store(tmp_path / "short.zarr", episodes=2)
    zarr.open_group(str(short), mode="r+")["reward"].resize((150,))
    assert_user_error(pvr_pipe("train", "--store", short, "--out", tmp_path / "r"), "different lengths", "reward 150")
    assert_user_error(pvr_pipe("train", "--store", linear_store, "--world-model", "planet"), "world_model", "dreamer")
    assert_user_error(pvr_pipe("train", "--store", linear_store, "--preset", "huge"), "preset")
    assert_user_error(pvr_pipe("train", "--store", linear_store, "--seed", "one"), "--seed", "not a valid integer")
    assert_user_error(pvr_pipe("train", "--store", linear_store, "--set", "depth=3", "--out", tmp_path / "r"),
                      "no setting", "depth")
    assert_user_error(pvr_pipe("train", "--store", linear_store, "--set", "lr"), "KEY=VALUE")
    assert_user_error(pvr_pipe("train", "--store", linear_store, "--set", "batch_size=-4", "--out", tmp_path / "r"),
                      "batch_size", "at least 1")
    assert_user_error(pvr_pipe("evaluate-model", "--run", tmp_path / "nothing"), "not a training run")
    assert not (tmp_path / "r").exists()


def test_evaluate_model_refuses_a_store_of_another_encoder(linear_store, tmp_path):
    run_dir = train_run(linear_store, tmp_path / "run", "tdmpc", updates=10)
    other = write_linear_system_store(tmp_path / "other.zarr", encoder="another-encoder")
    result = pvr_pipe("evaluate-model", "--run", run_dir, "--store", other)
    assert_user_error(result, "another-encoder", "same encoder")
    assert not (run_dir / "quality").exists()
    same_variant = write_linear_system_store(tmp_path / "again.zarr")
    assert_user_error(pvr_pipe("evaluate-model", "--run", run_dir, "--store", same_variant), "repeats variant")


def test_evaluate_model_scores_an_ood_store_with_its_own_frames(linear_store, tmp_path):
    run_dir = train_run(linear_store, tmp_path / "run", "tdmpc", updates=300)
    shifted = write_linear_system_store(tmp_path / "shifted.zarr", variant="shifted", map_seed=7)
    out = evaluate_model.run(EvaluateModelConfig(run=run_dir, stores=[str(shifted)], horizon=20))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"about", "train", "shifted"}
    assert metrics["shifted"]["episodes"] == "all" and metrics["shifted"]["frames"] == 8 * 101
    # Same dynamics seen through another linear map: the model and the probe fit to the training
    # look do worse on it.
    assert metrics["shifted"]["prediction_error"]["mean"] > 2 * metrics["train"]["prediction_error"]["mean"]
    assert metrics["shifted"]["probe"]["r2"] < metrics["train"]["probe"]["r2"] - 0.5
    header = (out / "prediction_error.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["horizon", "train", "shifted", "train_copy_last", "shifted_copy_last"]


def test_a_run_directory_of_another_config_is_refused(linear_store, tmp_path):
    run_dir = train_run(linear_store, tmp_path / "run", "tdmpc", updates=10)
    before = (run_dir / "checkpoint.safetensors").read_bytes()
    result = pvr_pipe("train", "--store", linear_store, "--world-model", "tdmpc", "--preset", "xs",
                      "--seed", "5", "--out", run_dir)
    assert_user_error(result, "different", "seed")
    assert (run_dir / "checkpoint.safetensors").read_bytes() == before


def test_evaluate_model_into_a_path_under_a_file_is_one_line(linear_store, tmp_path):
    run_dir = train_run(linear_store, tmp_path / "run", "tdmpc", updates=10)
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    assert_user_error(pvr_pipe("evaluate-model", "--run", run_dir, "--out", blocker / "quality"), "cannot",
                      str(blocker))
    assert blocker.read_text() == "keep me"


def test_a_run_whose_outputs_dvc_removed_reruns_beside_its_logs_and_a_killed_commands_leftovers(linear_store,
                                                                                               tmp_path):
    run_dir = train_run(linear_store, tmp_path / "run", "tdmpc", updates=20)
    for output in ("checkpoint.safetensors", "run.yaml"):     # what `dvc repro` removes before a rerun
        (run_dir / output).unlink()
    (run_dir / "finetune.lock").write_text("{}")              # a killed fine-tune's lock
    (run_dir / "checkpoint.safetensors.partial").write_bytes(b"half")
    train_run(linear_store, run_dir, "tdmpc", updates=20)
    assert load_checkpoint(run_dir / "checkpoint.safetensors")["update"] == 20

import json

import yaml

from tests.conftest import assert_user_error, collect_toy, pvr_pipe, snapshot

TOY = ["--env", "toy/pointmass-reach", "--max-steps", "5", "--quiet"]


def test_help_lists_the_verbs():
    result = pvr_pipe("--help")
    assert result.returncode == 0
    for verb in ("collect", "encode", "models", "envs", "info"):
        assert verb in result.stdout


def test_envs_lists_ids_and_variants():
    result = pvr_pipe("envs")
    assert result.returncode == 0
    assert "dmc/cartpole-swingup" in result.stdout and "texture" in result.stdout
    assert "toy/pointmass-reach" in result.stdout


def test_info_summarises_a_dataset(toy_dataset):
    result = pvr_pipe("info", toy_dataset, "--verify", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["episodes"] == 5 and summary["steps"] == 100 and summary["env"] == "toy/pointmass-reach"
    assert summary["frame"].startswith("64x64") and "mean" in summary["return"]
    assert "all shard hashes match" in summary["verified"]
    assert "episodes" in pvr_pipe("info", toy_dataset).stdout


def test_config_file_section_and_flags_override(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"collect": {"env": "toy/pointmass-reach", "episodes": 3,
                                                  "max_steps": 4, "variant": "lighting"}}))
    result = pvr_pipe("collect", "--config", f"{params}:collect", "--episodes", "2", "--quiet",
                      "--out", tmp_path / "ds")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["episodes"] == 2 and manifest["variant"] == "lighting" and manifest["steps"] == 8


def test_unknown_env(tmp_path):
    assert_user_error(pvr_pipe("collect", "--env", "dmc/nope", "--out", tmp_path / "x"),
                      "unknown env 'dmc/nope'", "dmc/cartpole-swingup")
    assert not (tmp_path / "x").exists()


def test_unknown_variant(tmp_path):
    assert_user_error(pvr_pipe("collect", *TOY, "--variant", "sepia", "--out", tmp_path / "x"),
                      "unknown variant 'sepia'", "agent_color")


def test_unknown_config_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("env: toy/pointmass-reach\nepisdoes: 3\n")
    assert_user_error(pvr_pipe("collect", "--config", config, "--out", tmp_path / "x"),
                      "unknown config key 'episdoes'")
    assert_user_error(pvr_pipe("collect", "--config", f"{config}:collect", "--out", tmp_path / "x"),
                      "section 'collect' not found")
    assert_user_error(pvr_pipe("collect", "--config", tmp_path / "missing.yaml"), "not found")


def test_bad_values(tmp_path):
    assert_user_error(pvr_pipe("collect", *TOY, "--episodes", "-3", "--out", tmp_path / "x"), "'episodes'")
    assert_user_error(pvr_pipe("collect", *TOY, "--episodes", "many", "--out", tmp_path / "x"), "--episodes")
    assert_user_error(pvr_pipe("collect", *TOY, "--jpeg-quality", "50", "--out", tmp_path / "x"), "jpeg_quality")
    assert_user_error(pvr_pipe("collect", *TOY, "--policy", "nosuch.module:make", "--out", tmp_path / "x"),
                      "policy 'nosuch.module:make'")
    assert_user_error(pvr_pipe("collect", *TOY), "--out")
    assert not (tmp_path / "x").exists()


def test_output_path_that_is_a_file(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert_user_error(pvr_pipe("collect", *TOY, "--out", target), "is a file")
    assert target.read_text() == "keep me"


def test_output_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    before = snapshot(tmp_path / "mine")
    assert_user_error(pvr_pipe("collect", *TOY, "--out", tmp_path / "mine"), "not a pvr-pipe dataset")
    assert snapshot(tmp_path / "mine") == before


def test_existing_dataset_with_a_different_config_is_untouched(tmp_path):
    collect_toy(tmp_path / "ds")
    before = snapshot(tmp_path / "ds")
    result = pvr_pipe("collect", "--env", "toy/pointmass-reach", "--episodes", "6", "--max-steps", "20",
                      "--seed", "3", "--episodes-per-shard", "2", "--quiet", "--out", tmp_path / "ds")
    assert_user_error(result, "different config", "episodes: 5 -> 6")
    assert snapshot(tmp_path / "ds") == before


def test_info_bad_paths(tmp_path):
    assert_user_error(pvr_pipe("info", tmp_path / "nothing"), "does not exist")
    assert_user_error(pvr_pipe("info", tmp_path), "not a trajectory dataset")


def test_info_names_a_corrupt_shard(tmp_path):
    collect_toy(tmp_path / "ds", episodes=2)
    shard = tmp_path / "ds" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-1024] + b"\0" * 1024 + b"x")
    assert_user_error(pvr_pipe("info", tmp_path / "ds", "--verify"), "shard-000000.tar", "corrupt")


def test_configs_compose_in_order_and_name_the_origin_of_a_bad_value(tmp_path):
    base, study = tmp_path / "base.yaml", tmp_path / "study.yaml"
    base.write_text("env: toy/pointmass-reach\nframe_size: 32\nepisodes: 1\nmax_steps: 3\n")
    study.write_text("frame_size: 48\n")
    result = pvr_pipe("collect", "--config", base, "--config", study, "--quiet", "--out", tmp_path / "ds")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["frame_size"] == 48
    study.write_text("frame_size: 4\n")
    assert_user_error(pvr_pipe("collect", "--config", base, "--config", study, "--out", tmp_path / "x"),
                      "'frame_size'", str(study))


def test_shipped_env_configs_are_valid():
    from pathlib import Path

    from pipeline.config import CollectConfig, load_config

    configs = sorted((Path(__file__).parent.parent / "configs" / "envs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(CollectConfig, [str(path)], {})


def test_collect_into_an_unwritable_place_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    result = pvr_pipe("collect", "--env", "toy/pointmass-reach", "--episodes", "1", "--out", blocker / "ds")
    assert_user_error(result, "cannot create the output directory", "--out")
    assert blocker.read_text() == "keep me"


def test_outputs_under_a_file_are_one_line_in_every_verb(tmp_path, toy_dataset):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    for command in (["encode", "--model", "pixels", "--dataset", toy_dataset, "--out", blocker / "s.zarr"],
                    ["envs", "--grid", blocker / "grid.png", "--env", "toy/pointmass-reach"]):
        assert_user_error(pvr_pipe(*command), "cannot", str(blocker))
    assert blocker.read_text() == "keep me"


def test_a_second_writer_of_one_output_is_refused_and_the_first_is_not_disturbed(tmp_path):
    import socket
    import subprocess
    import time

    from tests.conftest import PVR_PIPE

    args = ["collect", "--env", "dmc/cartpole-swingup", "--episodes", "6", "--max-steps", "40", "--out", tmp_path / "ds"]
    first = subprocess.Popen([PVR_PIPE, *map(str, args)], stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "ds.lock"
    deadline = time.time() + 120
    while not lock.exists():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    assert_user_error(pvr_pipe(*args), "is being written by `pvr-pipe collect`", f"pid {first.pid}")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert not lock.exists()
    assert pvr_pipe("info", tmp_path / "ds", "--verify").returncode == 0

    # A lock left by a process that died on this host is taken over; one from another host is not.
    dead = subprocess.Popen(["true"])
    dead.wait()
    small = ["collect", "--env", "toy/pointmass-reach", "--episodes", "1", "--max-steps", "5"]
    stale = tmp_path / "stale.lock"
    stale.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "command": "collect", "since": "-"}))
    assert pvr_pipe(*small, "--out", tmp_path / "stale").returncode == 0 and not stale.exists()
    foreign = tmp_path / "foreign.lock"
    foreign.write_text(json.dumps({"host": "elsewhere", "pid": 1, "command": "collect", "since": "-"}))
    assert_user_error(pvr_pipe(*small, "--out", tmp_path / "foreign"), "on elsewhere", f"delete {foreign}")
    assert not (tmp_path / "foreign").exists()


def test_a_weights_file_that_is_not_tensors_only_is_refused_in_one_line_without_torchs_advice(tmp_path, toy_dataset):
    import datetime

    import torch

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"r3m": {"module.convnet.conv1.weight": torch.zeros(1)}, "saved": datetime.date(2024, 1, 1)}, unsafe)
    result = pvr_pipe("encode", "--model", "r3m", "--weights", unsafe, "--dataset", toy_dataset,
                      "--out", tmp_path / "s.zarr")
    assert_user_error(result, str(unsafe), "tensors-only loader refuses", "safetensors")
    assert "weights_only" not in result.stderr and not (tmp_path / "s.zarr").exists()

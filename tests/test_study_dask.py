"""The study on Dask, against a serial `dvc repro` of the same tiny study: the same dvc.lock hashes
from a local cluster and from a scheduler and two workers started apart with the `dask` CLI; a
killed driver loses no finished stage; and outputs do not change with an unrelated commit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TINY = {
    "study": {"envs": ["toy"], "train_variant": "train", "variants": ["train", "floor_color"],
              "encoders": ["state", "pixels"], "world_models": ["tdmpc"], "seeds": [0]},
    "envs": {"toy": {"env": "toy/pointmass-reach"}},
    "collect": {"episodes": 4, "max_steps": 20, "episodes_per_shard": 2, "seed": 0, "frame_size": 64,
                "image_format": "png", "policy": "random", "workers": 1},
    "encode": {"dtype": "float16", "precision": "auto"},
    "encoder_options": {"state": {"batch_size": 256}, "pixels": {"batch_size": 256}},
    "train": {"preset": "xs", "updates": 20, "log_every": 10, "checkpoint_every": 10, "threads": 1},
    "world_models": {"tdmpc": {"settings": {}}},
    "evaluate_model": {"context": 5},
    "finetune": {"env_steps": 20, "eval_every": 20, "eval_episodes": 1, "threads": 1},
    "evaluate": {"variants": ["train", "floor_color"], "episodes": 1, "threads": 1},
    "report": {"bootstrap_reps": 100, "seed": 0},
}


def run(*args, cwd, timeout=1200, check=True):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert not check or result.returncode == 0, result.stderr[-3000:]
    return result


def workspace(tmp_path: Path, name: str) -> Path:
    """A git and DVC workspace holding the project's files as they are now, and the tiny study."""
    root = tmp_path / name
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for file in files:
        if (REPO / file).is_file() and not file.startswith("benchmarks/results/"):
            (root / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / file, root / file)
    (root / "dvc.lock").unlink()      # nothing run yet
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    run("git", "init", "-q", cwd=root)
    run("git", "add", "-A", cwd=root)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "workspace", cwd=root)
    return root


def outputs(root: Path) -> dict[str, dict[str, str]]:
    """Each stage in dvc.lock: its outputs' hashes."""
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: {out["path"]: out["md5"] for out in stage.get("outs", [])} for name, stage in stages.items()}


def recorded_so_far(root: Path) -> dict[str, dict[str, str]]:
    try:
        return outputs(root)
    except (OSError, TypeError, yaml.YAMLError):   # not written yet, or being rewritten this moment
        return {}


def test_the_study_on_dask_leaves_the_hashes_of_a_serial_dvc_repro(tmp_path):
    serial = workspace(tmp_path, "serial")
    run("pvr-pipe", "study", "tiny.yaml", "--no-run", cwd=serial)
    run("dvc", "repro", cwd=serial)
    expected = outputs(serial)
    assert len(expected) == 15

    # A local cluster; the driver killed once some stages are recorded, then the same command again.
    local = workspace(tmp_path, "local")
    driver = subprocess.Popen([BIN / "pvr-pipe", "study", "tiny.yaml", "--workers", "2", "--quiet"], cwd=local,
                              env=dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"),
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while len(recorded_so_far(local)) < 13 and time.time() < deadline:
        assert driver.poll() is None, "the study ended before it was killed"
        time.sleep(0.2)
    recorded = recorded_so_far(local)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(2)
    again = run("pvr-pipe", "study", "tiny.yaml", "--workers", "2", "--quiet", cwd=local)
    assert outputs(local) == expected
    ran = int(again.stderr.split("study: ")[-1].split(" stages ran")[0])
    assert ran <= 15 - len(recorded)      # what was recorded before the kill was not redone
    assert "Data and pipelines are up to date" in run("dvc", "status", cwd=local).stdout

    # A scheduler and two workers started apart, as on other machines.
    apart = workspace(tmp_path, "apart")
    scheduler_file = tmp_path / "scheduler.json"
    cluster = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                 "--scheduler-file", scheduler_file, "--no-dashboard"], stderr=subprocess.DEVNULL)]
    try:
        while not scheduler_file.exists():
            time.sleep(0.1)
        time.sleep(1)
        address = yaml.safe_load(scheduler_file.read_text())["address"]
        cluster += [subprocess.Popen([BIN / "dask", "worker", address, "--nworkers", "1", "--nthreads", "1",
                                      "--no-dashboard"], stderr=subprocess.DEVNULL) for _ in range(2)]
        run("pvr-pipe", "study", "tiny.yaml", "--scheduler", address, "--quiet", cwd=apart)
    finally:
        for process in cluster:
            process.terminate()
            process.wait(timeout=60)
    assert outputs(apart) == expected

    # Content addressing: an unrelated commit, a forced rerun, the same output hashes.
    (local / "README.md").write_text((local / "README.md").read_text() + "\nAn unrelated line.\n")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "unrelated", cwd=local)
    for stage in ("collect@toy-train", "encode@toy-train-pixels", "train@toy-pixels-tdmpc-0"):
        run("dvc", "repro", "--force", "-s", stage, cwd=local)
    assert outputs(local) == expected

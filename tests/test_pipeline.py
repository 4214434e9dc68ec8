"""The DVC pipeline end to end at a tiny size: repro, no-op rerun, targeted rerun, metrics and
plots, sharing through a DVC remote, and the study command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import assert_user_error, pvr_pipe, snapshot

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def sh(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run(list(map(str, args)), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A fresh git + DVC checkout of the tracked files (no outputs, no lock file)."""
    repo = tmp_path / "repo"
    files = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO).stdout.split()
    for name in files:
        if name != "dvc.lock" and (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    sh("git", "init", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy", cwd=repo)
    return repo


def make_tiny(repo: Path) -> dict:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["study"].update(encoders=["pixels", "efficientnet-lite0"], seeds=[0, 1])
    params["collect"].update(episodes=3, max_steps=40, episodes_per_shard=2, workers=1)
    params["train"].update(updates=10, log_every=5, checkpoint_every=5)
    params["world_models"]["dreamer"]["settings"].update(batch_size=4, sequence_length=16)
    params["world_models"]["tdmpc"]["settings"] = {"batch_size": 32}
    params["finetune"].update(env_steps=40, eval_every=40, eval_episodes=1, train_ratio=0.25)
    params["evaluate"].update(episodes=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def test_tiny_study_runs_reruns_nothing_and_only_what_a_parameter_touches(repo_copy):
    repo = repo_copy
    params = make_tiny(repo)
    first = sh("dvc", "repro", cwd=repo)
    stages = ran_stages(first.stdout)
    assert len(stages) == 2 + 4 + 4 * 8 + 1, sorted(stages)
    assert {"train@cartpole_swingup-efficientnet-lite0-tdmpc-1", "finetune@cartpole_swingup-pixels-dreamer-0",
            "evaluate@cartpole_swingup-efficientnet-lite0-tdmpc-1"} <= stages
    for name in ("report.md", "report.html", "prediction_error.png", "ood.png", "probe_r2.png", "properties.png",
                 "learning_curves.png", "returns_ood.png", "returns.csv"):
        assert (repo / "reports" / name).stat().st_size > 0, name
    quality = repo / "runs/cartpole_swingup/pixels/dreamer/seed1/quality/metrics.json"
    assert {"train", "texture"} <= set(yaml.safe_load(quality.read_text()))
    returns = repo / "runs/cartpole_swingup/pixels/dreamer/seed1/finetune/evaluation/metrics.json"
    assert {"train", "texture", "random"} <= set(yaml.safe_load(returns.read_text()))

    second = sh("dvc", "repro", cwd=repo)
    assert ran_stages(second.stdout) == set() and "up to date" in second.stdout

    params["world_models"]["tdmpc"]["settings"]["lr"] = 1e-3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = sh("dvc", "repro", cwd=repo)
    online = ("train", "evaluate-model", "finetune", "evaluate")
    expected = {f"{stage}@cartpole_swingup-{encoder}-tdmpc-{seed}" for stage in online
                for encoder in ("pixels", "efficientnet-lite0") for seed in (0, 1)} | {"report"}
    assert ran_stages(third.stdout) == expected

    params["encoder_options"]["pixels"]["batch_size"] = 128        # one encoder's option: its branch only
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fourth = sh("dvc", "repro", cwd=repo)
    expected = ({f"encode@cartpole_swingup-{variant}-pixels" for variant in ("train", "texture")}
                | {f"{stage}@cartpole_swingup-pixels-{wm}-{seed}" for stage in online
                   for wm in ("dreamer", "tdmpc") for seed in (0, 1)} | {"report"})
    assert ran_stages(fourth.stdout) == expected

    metrics = sh("dvc", "metrics", "show", cwd=repo).stdout
    assert "quality/metrics.json" in metrics and "live/metrics.json" in metrics
    assert "evaluation/metrics.json" in metrics and "finetune/live/metrics.json" in metrics
    sh("dvc", "plots", "show", "-o", "plots_html", cwd=repo)
    assert (repo / "plots_html/index.html").exists()

    # Share through a DVC remote: push, lose outputs and cache, pull, get the same bytes.
    outputs = ["data", "runs", "reports"]
    before = {name: snapshot(repo / name) for name in outputs}
    sh("dvc", "remote", "add", "-d", "shared", repo.parent / "remote", cwd=repo)
    sh("dvc", "push", cwd=repo)
    for name in outputs:
        shutil.rmtree(repo / name)
    shutil.rmtree(repo / ".dvc/cache")
    sh("dvc", "pull", cwd=repo)
    assert {name: snapshot(repo / name) for name in outputs} == before
    assert ran_stages(sh("dvc", "repro", cwd=repo).stdout) == set()


def test_study_command_checks_weights_before_anything_runs(repo_copy):
    repo = repo_copy
    before = (repo / "params.yaml").read_bytes()
    result = pvr_pipe("study", "configs/studies/paper.yaml", "--no-run", cwd=repo)
    assert_user_error(result, "no local weights", "dinov2")
    assert (repo / "params.yaml").read_bytes() == before

    study = yaml.safe_load(before)
    study["study"]["encoders"] = ["pixels", "no-such-pvr"]
    (repo / "bad.yaml").write_text(yaml.safe_dump(study))
    assert_user_error(pvr_pipe("study", "bad.yaml", "--no-run", cwd=repo), "study.encoders", "no-such-pvr")
    study["study"]["encoders"] = ["pixels"]
    study["world_models"]["tdmpc"]["settings"] = {"not_a_setting": 1}
    (repo / "bad.yaml").write_text(yaml.safe_dump(study))
    assert_user_error(pvr_pipe("study", "bad.yaml", "--no-run", cwd=repo), "world_models.tdmpc", "not_a_setting")
    assert (repo / "params.yaml").read_bytes() == before

    study["world_models"]["tdmpc"]["settings"] = {}
    (repo / "small.yaml").write_text(yaml.safe_dump(study))
    result = pvr_pipe("study", "small.yaml", "--no-run", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "1 encode" not in result.stderr and "2 encode" in result.stderr
    assert yaml.safe_load((repo / "params.yaml").read_text())["study"]["encoders"] == ["pixels"]

    # One suite of a study at a time: --set changes values before the checks.
    result = pvr_pipe("study", "small.yaml", "--no-run", "--set", "study.seeds=[3]", "--set", "study.variants=[train]",
                      "--set", "evaluate.variants=[train]", cwd=repo)
    assert result.returncode == 0, result.stderr
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["study"]["seeds"] == [3] and params["study"]["variants"] == ["train"]
    assert_user_error(pvr_pipe("study", "small.yaml", "--no-run", "--set", "study.seed=[3]", cwd=repo),
                      "no key 'study.seed'", "seeds")
    assert_user_error(pvr_pipe("study", "small.yaml", "--no-run", "--set", "study.variants=[train, sepia]", cwd=repo),
                      "unknown variant 'sepia'")

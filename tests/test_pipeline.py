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


def make_tiny(repo: Path, encoders: list[str], seeds: list[int]) -> dict:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["study"].update(encoders=encoders, seeds=seeds)
    params["collect"].update(episodes=3, max_steps=40, episodes_per_shard=2, workers=1)
    params["train"].update(updates=10, log_every=5, checkpoint_every=5)
    params["world_models"]["dreamer"]["settings"].update(batch_size=4, sequence_length=16)
    params["world_models"]["tdmpc"]["settings"] = {"batch_size": 32}
    params["finetune"].update(env_steps=40, eval_every=40, eval_episodes=1, train_ratio=0.25)
    params["evaluate"].update(episodes=1)
    write_params(repo, params)
    return params


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


ALL_SEEDS, PER_SEED = ("train", "finetune"), ("evaluate-model", "evaluate")


def branch(encoders, world_models, seeds, stages=ALL_SEEDS + PER_SEED) -> set[str]:
    """One train and one finetune stage per (encoder, world model) over every seed (DVC names its
    one item `seeds0`), the other stages per seed."""
    return ({f"{stage}@cartpole_swingup-{e}-{wm}-seeds0" for stage in ALL_SEEDS if stage in stages
             for e in encoders for wm in world_models}
            | {f"{stage}@cartpole_swingup-{e}-{wm}-{seed}" for stage in PER_SEED if stage in stages
               for e in encoders for wm in world_models for seed in seeds})


@pytest.mark.timeout(1200)   # 13 DVC stages; about 8 min when the machine is shared
def test_tiny_study_runs_reruns_nothing_and_is_shared_through_a_remote(repo_copy):
    repo = repo_copy
    params = make_tiny(repo, encoders=["pixels"], seeds=[0])
    stages = ran_stages(sh("dvc", "repro", cwd=repo).stdout)
    assert stages == ({f"collect@cartpole_swingup-{v}" for v in ("train", "texture")}
                      | {f"encode@cartpole_swingup-{v}-pixels" for v in ("train", "texture")}
                      | branch(["pixels"], ["dreamer", "tdmpc"], [0]) | {"report"}), sorted(stages)
    for name in ("report.md", "report.html", "prediction_error.png", "ood.png", "probe_r2.png", "learning_curves.png",
                 "returns_ood.png", "returns.csv"):
        assert (repo / "reports" / name).stat().st_size > 0, name
    assert "nothing to group" in (repo / "reports/report.md").read_text()    # one encoder: no property plot
    quality = repo / "runs/cartpole_swingup/pixels/dreamer/quality/seed0/metrics.json"
    assert {"train", "texture"} <= set(yaml.safe_load(quality.read_text()))
    returns = repo / "runs/cartpole_swingup/pixels/dreamer/evaluation/seed0/metrics.json"
    assert {"train", "texture", "random"} <= set(yaml.safe_load(returns.read_text()))

    second = sh("dvc", "repro", cwd=repo)
    assert ran_stages(second.stdout) == set() and "up to date" in second.stdout

    # (that a changed setting reruns only its branch: the slow test below)
    metrics = sh("dvc", "metrics", "show", cwd=repo).stdout
    assert "quality/seed0/metrics.json" in metrics and "evaluation/seed0/metrics.json" in metrics
    sh("dvc", "plots", "show", "-o", "plots_html", cwd=repo)
    assert (repo / "plots_html/index.html").exists()

    # Share through a DVC remote: push, lose outputs and cache, pull, get the same bytes.
    outputs = ["data", "runs", "reports"]

    def tracked(name):   # wall-clock timing/ is a run's own, kept out of what DVC tracks and shares
        return {path: digest for path, digest in snapshot(repo / name).items() if "/timing/" not in path}

    before = {name: tracked(name) for name in outputs}
    sh("dvc", "remote", "add", "-d", "shared", repo.parent / "remote", cwd=repo)
    sh("dvc", "push", cwd=repo)
    for name in outputs:
        shutil.rmtree(repo / name)
    shutil.rmtree(repo / ".dvc/cache")
    sh("dvc", "pull", cwd=repo)
    assert {name: tracked(name) for name in outputs} == before
    assert ran_stages(sh("dvc", "repro", cwd=repo).stdout) == set()


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_changed_parameter_reruns_only_its_branch_across_encoders_and_seeds(repo_copy):
    repo = repo_copy
    encoders, seeds = ["pixels", "efficientnet-lite0"], [0, 1]
    params = make_tiny(repo, encoders=encoders, seeds=seeds)
    assert len(ran_stages(sh("dvc", "repro", cwd=repo).stdout)) == 2 + 4 + 4 + 2 * 8 + 1
    assert (repo / "reports/properties.png").stat().st_size > 0

    params["world_models"]["tdmpc"]["settings"]["lr"] = 1e-3
    write_params(repo, params)
    assert ran_stages(sh("dvc", "repro", cwd=repo).stdout) == branch(encoders, ["tdmpc"], seeds) | {"report"}

    params["encoder_options"]["pixels"]["batch_size"] = 128        # one encoder's option: its branch only
    write_params(repo, params)
    assert ran_stages(sh("dvc", "repro", cwd=repo).stdout) == (
        {f"encode@cartpole_swingup-{variant}-pixels" for variant in ("train", "texture")}
        | branch(["pixels"], ["dreamer", "tdmpc"], seeds) | {"report"})

    params["finetune"]["eval_episodes"] = 2                        # the online stages only
    write_params(repo, params)
    assert ran_stages(sh("dvc", "repro", cwd=repo).stdout) == branch(
        encoders, ["dreamer", "tdmpc"], seeds, stages=("finetune", "evaluate")) | {"report"}


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

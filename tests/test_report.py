"""The report: tables with IQM and bootstrap CIs over seeds, figures, grouped by PVR property."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from conftest import assert_user_error, pvr_pipe, write_linear_system_store
from pipeline.config import EvaluateModelConfig, ReportConfig, TrainConfig
from stages import evaluate_model, report, train


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    """2 synthetic 'encoders' (one ViT-like, one CNN-like) x 2 world models x 2 seeds, scored on
    held-out episodes and on an OOD look."""
    root = tmp_path_factory.mktemp("study")
    import zarr

    for encoder, architecture, diversity in (("enc-vit", "vit", "high"), ("enc-cnn", "cnn", "medium")):
        stores = {}
        for variant, map_seed in (("train", 0), ("shifted", 7)):
            path = write_linear_system_store(root / "data" / encoder / f"{variant}.zarr", episodes=5, encoder=encoder,
                                             variant=variant, map_seed=map_seed)
            zarr.open_group(str(path), mode="r+").attrs["properties"] = {
                "architecture": architecture, "data_diversity": diversity, "video": False, "language": False}
            stores[variant] = path
        for world_model in ("dreamer", "tdmpc"):
            for seed in (0, 1):
                run_dir = root / "runs" / encoder / world_model / f"seed{seed}"
                settings = {"sequence_length": 16} if world_model == "dreamer" else {}
                train.run(TrainConfig(store=str(stores["train"]), world_model=world_model, preset="xs", seed=seed,
                                      settings=settings, updates=5, out=run_dir), show_progress=False)
                evaluate_model.run(EvaluateModelConfig(run=run_dir, stores=[str(root / "data" / encoder)], horizon=10))
    return root


def test_report_has_tables_figures_and_one_row_per_run_and_look(study_runs):
    out = report.run(ReportConfig(runs=study_runs / "runs", out=study_runs / "reports", bootstrap_reps=200))
    text = (out / "report.md").read_text()
    for fragment in ("enc-vit", "enc-cnn", "By architecture", "By training-data diversity", "shifted",
                     "![prediction error vs horizon](prediction_error.png)", "symmetric_kl", "latent_mse"):
        assert fragment in text, fragment
    for name in ("prediction_error", "reward_error", "ood", "probe_r2", "properties"):
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            assert len(np.unique(np.asarray(image.convert("L")))) > 10      # something was drawn
    html = (out / "report.html").read_text()
    assert "<table>" in html and "<img" in html
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2 * 2
    assert {r["variant"] for r in rows} == {"train", "shifted"}


def test_iqm_and_bootstrap_interval():
    values = [1.0, 2.0, 3.0, 4.0, 100.0, -50.0, 2.5, 3.5]
    point, low, high = report.iqm_with_ci(values, reps=500, seed=0)
    ordered = np.sort(values)
    assert point == pytest.approx(ordered[2:6].mean())        # the middle half
    assert low <= point <= high and high - low > 0
    assert report.iqm_with_ci([4.0], reps=10, seed=0) == (4.0, 4.0, 4.0)


def test_report_without_runs_is_one_line(tmp_path):
    result = pvr_pipe("report", "--runs", tmp_path, "--out", tmp_path / "reports")
    assert_user_error(result, "no run metrics", "evaluate-model")
    assert not (tmp_path / "reports").exists()


def test_learning_curves_of_the_same_encoder_and_seed_on_two_envs_are_both_kept(tmp_path):
    import yaml

    for env, top in (("dmc/cartpole-swingup", 300.0), ("dmc/finger-spin", 900.0)):
        agent = tmp_path / "runs" / env.split("/")[1] / "pixels" / "tdmpc" / "finetune" / "seed0"
        curve = agent / "live/plots/metrics/eval"
        curve.mkdir(parents=True)
        (curve / "return.tsv").write_text(f"step\treturn\n0\t10.0\n100\t{top}\n")
        info = {"identity": {"world_model": "tdmpc", "seed": 0}, "encoder": "pixels", "env": env,
                "random_return": 5.0}
        (agent / "finetune.yaml").write_text(yaml.safe_dump(info))
    online = report.load_online(tmp_path / "runs")
    assert sorted(online.curves) == [("dmc/cartpole-swingup", "pixels", "tdmpc", 0), ("dmc/finger-spin", "pixels", "tdmpc", 0)]
    assert sorted(float(returns[-1]) for _, returns in online.curves.values()) == [300.0, 900.0]

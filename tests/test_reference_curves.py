"""The pure parts of benchmarks/reference_curves.py: published table, units, interpolation, ratios, targets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "reference_curves.py"
spec = importlib.util.spec_from_file_location("reference_curves", SCRIPT)
rc = importlib.util.module_from_spec(spec)
sys.modules["reference_curves"] = rc     # dataclasses look their module up there
spec.loader.exec_module(rc)


@pytest.fixture(scope="module")
def published():
    return rc.load_published()


def test_project_copy_of_the_published_table_has_every_target_with_its_source(published):
    tdmpc_state = published[("tdmpc2", "state", "cartpole-balance")]
    assert tdmpc_state["source"] == "nicklashansen/tdmpc2 results/tdmpc2/cartpole-balance.csv"
    assert tdmpc_state["seeds"] == 3
    expected = {("tdmpc2", "state", "cartpole-balance", 200_000): 997.8,
                ("tdmpc2", "state", "cartpole-swingup", 200_000): 839.4,
                ("dreamerv3", "state", "cartpole-balance", 50_000): 490.3,
                ("dreamerv3", "state", "cartpole-swingup", 50_000): 321.6,
                ("dreamerv3", "state", "cartpole-balance", 100_000): 839.7,
                ("dreamerv3", "state", "cartpole-swingup", 100_000): 527.7,
                ("tdmpc2", "pixels", "finger-spin", 200_000): 980.8,
                ("dreamerv3", "pixels", "cartpole-balance", 50_000): 612.6}
    for (algorithm, observation, task, sim), mean in expected.items():
        curve = published[(algorithm, observation, task)]
        assert rc.interpolate(curve["points"], sim) == pytest.approx(mean)
        repository = {"tdmpc2": "nicklashansen/tdmpc2", "dreamerv3": "danijar/dreamerv3"}[algorithm]
        assert curve["source"].startswith(repository)
    # TD-MPC2 logs agent steps at action repeat 2: its 100k is 200k simulator steps
    point = next(p for p in tdmpc_state["points"] if p["simulator_steps"] == 200_000)
    assert point["agent_steps_at_repeat_2"] == 100_000
    # every target names a published curve and a point inside it
    for (wm, encoder, task), steps in rc.TARGETS.items():
        curve = published[(rc.ALGORITHM[wm], rc.observation_of(encoder), task)]
        assert all(rc.interpolate(curve["points"], sim) is not None for sim in steps)
    assert ("tdmpc2", "pixels", "cartpole-balance") not in published     # not in the source


def test_interpolate_is_linear_inside_and_none_outside():
    points = [{"simulator_steps": 0, "mean": 100.0}, {"simulator_steps": 200, "mean": 300.0}]
    assert rc.interpolate(points, 50) == pytest.approx(150.0)
    assert rc.interpolate(points, 200) == pytest.approx(300.0)
    assert rc.interpolate(points, 201) is None
    assert rc.interpolate(points[1:], 200) == pytest.approx(300.0)
    assert rc.interpolate(points[1:], 100) is None
    assert rc.interpolate([], 0) is None


def test_aggregate_and_last_common_step_over_seeds_that_got_different_distances():
    curves = {0: [(0, 10.0), (500, 20.0), (1000, 40.0)], 1: [(0, 30.0), (500, 60.0)]}
    ours = rc.aggregate(curves, action_repeat=2)
    assert ours == [{"agent_steps": 0, "simulator_steps": 0, "seeds": 2, "mean": 20.0, "min": 10.0, "max": 30.0},
                    {"agent_steps": 500, "simulator_steps": 1000, "seeds": 2, "mean": 40.0, "min": 20.0, "max": 60.0},
                    {"agent_steps": 1000, "simulator_steps": 2000, "seeds": 1, "mean": 40.0, "min": 40.0,
                     "max": 40.0}]
    assert rc.last_common_step(curves) == 500
    assert rc.last_common_step({0: [], 1: []}) is None
    assert rc.last_common_step({}) is None


def test_compare_gives_the_ratio_at_the_last_point_and_the_targets(published):
    reference = published[("tdmpc2", "state", "cartpole-balance")]
    curves = {0: [(0, 200.0), (50_000, 700.0), (100_000, 900.0)], 1: [(0, 220.0), (50_000, 720.0), (100_000, 800.0)]}
    ours = rc.aggregate(curves, 2)
    last, targets = rc.compare(ours, rc.last_common_step(curves), reference, [200_000], 2)
    assert last["simulator_steps"] == 200_000 and last["ours_mean"] == 850.0
    assert last["published_mean"] == pytest.approx(997.8)
    assert last["ratio"] == pytest.approx(round(850 / 997.8, 3))
    assert last["target_ratio"] == rc.TARGET_RATIO
    assert targets == [{"simulator_steps": 200_000, "agent_steps": 100_000, "published_mean": 997.8, "reached": True,
                        "ours_mean": 850.0, "ours_interpolated": False, "ratio": 0.852, "target_ratio": 0.85,
                        "met": True}]
    # half way: the published mean is interpolated between its 0 and 200k points; no target there
    last, targets = rc.compare(ours, 50_000, reference, [200_000], 2)
    assert last["published_mean"] == pytest.approx((236.0 + 997.8) / 2, abs=0.01)
    assert last["target_ratio"] is None
    assert targets[0]["reached"] is False and targets[0]["ratio"] is None and targets[0]["met"] is None


def test_compare_outside_the_published_range_and_without_a_published_curve(published):
    dreamer = published[("dreamerv3", "state", "cartpole-balance")]       # starts at 10k simulator steps
    ours = rc.aggregate({0: [(0, 50.0), (2500, 300.0), (5000, 500.0)]}, 2)
    last, _ = rc.compare(ours, 2500, dreamer, [], 2)
    assert last["published_mean"] is None and last["ratio"] is None and "why_no_ratio" in last
    last, targets = rc.compare(ours, 5000, dreamer, [50_000], 2)
    assert last["published_mean"] == pytest.approx(316.3) and targets[0]["reached"] is False
    # a target between two evaluations is our curve interpolated there
    ours = rc.aggregate({0: [(20_000, 400.0), (30_000, 600.0)]}, 2)
    _, targets = rc.compare(ours, 30_000, dreamer, [50_000], 2)
    assert targets[0]["ours_mean"] == 500.0 and targets[0]["ours_interpolated"] is True
    last, targets = rc.compare(ours, 30_000, None, [], 2)
    assert last["published_mean"] is None and last["ratio"] is None and targets == []
    assert rc.compare([], None, dreamer, [50_000], 2)[0] is None


def test_read_tsv_and_names(tmp_path):
    path = tmp_path / "return.tsv"
    path.write_text("step\treturn\n0\t12.5\n500\t30.25\n")
    assert rc.read_tsv(path) == [(0, 12.5), (500, 30.25)]
    assert rc.read_tsv(tmp_path / "missing.tsv") == []
    assert rc.observation_of("state") == "state"
    assert rc.observation_of("pixels") == rc.observation_of("dinov2") == "pixels"
    assert rc.task_name("dmc/cartpole-balance") == rc.task_name("cartpole-balance") == "cartpole-balance"
    with pytest.raises(ValueError):
        rc.task_name("miniworld/OneRoom-v0")
    assert rc.run_dir_name("tdmpc", "m", 1.0, None, None) == "tdmpc-m"
    assert rc.run_dir_name("dreamer", "xs", 1.0, 0, 100) == "dreamer-xs-tr1-ss0-ep100"
    assert rc.parse_per_world_model(["2", "dreamer=1"], ["tdmpc", "dreamer"], float, "--train-ratio") == \
        {"tdmpc": 2.0, "dreamer": 1.0}
    with pytest.raises(SystemExit):
        rc.parse_per_world_model(["sac=1"], ["tdmpc"], float, "--train-ratio")
    settings = rc.parse_settings(["dreamer:actor_grad=dynamics", "embed_head=mlp"], ["tdmpc", "dreamer"])
    assert settings == {"tdmpc": {"embed_head": "mlp"}, "dreamer": {"actor_grad": "dynamics", "embed_head": "mlp"}}
    assert rc.run_dir_name("dreamer", "xs", 0.5, None, None, settings["dreamer"]) == \
        "dreamer-xs-actor_grad=dynamics-embed_head=mlp"
    for bad in (["sac:lr=1"], ["dreamer:lr"], ["=1"]):
        with pytest.raises(SystemExit) as exit_info:
            rc.parse_settings(bad, ["dreamer"])
        assert exit_info.value.code == 2


def test_a_seed_without_a_run_directory_is_drawn_from_its_record(tmp_path):
    run_dir, record = tmp_path / "runs" / "seed0", tmp_path / "results" / "seed0.json"
    curve = [[0, 50.0], [5000, 400.0], [10000, 800.0]]
    summary = {"seed": 0, "status": "finished", "agent_steps_reached": 10000, "simulator_steps_reached": 20000}
    args = (run_dir, 0, 10000, 2, None, tmp_path / "wall.json", tmp_path / "log", ["pvr-pipe"], record)
    assert rc.summarise_run(*args)[0]["status"] == "not started" and not record.exists()
    record.parent.mkdir(parents=True)
    record.write_text(rc.json.dumps({"summary": summary, "curve": curve}))
    drawn, points = rc.summarise_run(*args)
    assert drawn["status"] == "finished" and drawn["from_record"] == str(record) and points == [tuple(p) for p in curve]
    assert rc.finished_record(record, 10000) and not rc.finished_record(record, 20000)
    longer = rc.summarise_run(run_dir, 0, 20000, *args[3:])[0]
    assert longer["status"] == "partial"         # a longer run asked for: the record is not the end of it


def test_a_run_directory_wins_over_its_record_and_rewrites_it(tmp_path):
    run_dir, record = tmp_path / "runs" / "seed1", tmp_path / "results" / "seed1.json"
    metrics = run_dir / "live" / "plots" / "metrics"
    (metrics / "eval").mkdir(parents=True)
    (metrics / "eval" / "return.tsv").write_text("step\treturn\n0\t20.0\n5000\t300.0\n")
    (run_dir / "finetune.yaml").write_text("identity: {seed_steps: 2500, train_ratio: 1.0}\nrandom_return: 20.0\n")
    record.parent.mkdir(parents=True)
    record.write_text(rc.json.dumps({"summary": {"status": "finished", "agent_steps_reached": 99}, "curve": []}))
    summary, curve = rc.summarise_run(run_dir, 1, 10000, 2, None, tmp_path / "wall.json", tmp_path / "log",
                                      ["pvr-pipe"], record)
    assert summary["status"] == "partial" and "from_record" not in summary
    assert curve == [(0, 20.0)]                   # no checkpoint yet: later evaluations will be redone
    assert rc.json.loads(record.read_text())["summary"]["agent_steps_reached"] == 0

"""Stages on Dask: dependency order, failures kept to what depends on them, GPU stages named."""

from __future__ import annotations

import pytest

from pipeline.study_executor import run_study
from pipeline.study_graph import StudyStage, needs_gpu


class ShellGraph:
    """Stages that are shell commands writing marker files; records what the driver recorded."""

    def __init__(self, root, commands: dict[str, tuple[str, tuple[str, ...]]], up_to_date=()):
        self.stages = [StudyStage(name, cmd, str(root), upstream, False) for name, (cmd, upstream) in commands.items()]
        self.up_to_date, self.recorded = set(up_to_date), []

    def prepare(self, name):
        return name not in self.up_to_date

    def record(self, name):
        self.recorded.append(name)


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as dask_client:
        yield dask_client


def test_stages_run_after_what_they_read_and_a_failure_stops_only_what_depends_on_it(tmp_path, client):
    graph = ShellGraph(tmp_path, {
        "collect": ("echo data > data", ()),
        "encode": ("cat data > store", ("collect",)),
        "broken": ("echo wrong >&2; exit 3", ("collect",)),
        "train": ("cat store > run", ("encode",)),
        "evaluate": ("touch never", ("broken",)),
        "report": ("touch never-either", ("train", "evaluate")),
    }, up_to_date={"collect"})
    (tmp_path / "data").write_text("data\n")
    seen = []
    outcome = run_study(graph, client, tmp_path, on_change=seen.append)
    assert outcome.up_to_date == ["collect"] and sorted(outcome.ran) == ["encode", "train"]
    assert list(outcome.failed) == ["broken"] and sorted(outcome.not_run) == ["evaluate", "report"]
    assert graph.recorded == ["encode", "train"]                 # recorded as each finished, in order
    assert (tmp_path / "run").read_text() == "data\n" and not (tmp_path / "never").exists()
    log = open(outcome.failed["broken"]).read()
    assert "wrong" in log and "[pvr-pipe study] exit 3 after" in log   # what it said, its exit and wall time
    assert seen[-1] == {"done": 3, "running": 0, "failed": 1, "left": 2}


def test_a_stage_needs_a_gpu_when_its_command_or_a_params_block_it_reads_says_cuda():
    params = {"encode": {"device": "cuda"}, "train": {"device": "cpu"}, "encoder_options": {"dinov2": {}}}
    assert needs_gpu("pvr-pipe encode --config params.yaml:encode --config params.yaml:encoder_options.dinov2", params)
    assert not needs_gpu("pvr-pipe train --config params.yaml:train", params)
    assert needs_gpu("pvr-pipe train --config params.yaml:train --device cuda:1", params)
    assert not needs_gpu("pvr-pipe collect --config params.yaml:collect", params)

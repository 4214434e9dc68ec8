"""Running a study's stages as Dask tasks: as many at once as there are workers, in dependency order.

A stage's command runs in a subprocess on a worker, in the workspace (on other machines: the
same path on a shared filesystem), its output going to `.dvc/tmp/study-logs/<stage>.log`. All
else happens in the driver, one stage at a time: `StageGraph.prepare` before a stage is
submitted and `StageGraph.record` as soon as it succeeds, so killing the driver loses no finished
stage. A stage that fails is reported with its command and log; the stages below it are not
run, all others go on. A stage that needs a GPU asks for the Dask resource `GPU`, so it lands
only on a worker that has one (`dask worker ADDRESS --resources GPU=1`; a local cluster gives
each worker the resource when a CUDA device is visible).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.study_graph import StageGraph

LOG_DIR = Path(".dvc") / "tmp" / "study-logs"


# Dask's nanny sets these to 1 for its workers (and in the process that starts a local cluster);
# a stage's numbers (BLAS reductions) depend on them, so a stage gets the values this process had
# when it imported this module: the same bytes as under a serial `dvc repro`.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
DRIVER_THREAD_SETTINGS = {name: os.environ.get(name) for name in THREAD_VARIABLES}


def run_stage_command(cmd: str, wdir: str, log_path: str, thread_settings: dict[str, str | None]) -> int:
    """On a worker: the stage's command, with the worker's own pvr-pipe first on PATH; it dies with
    the worker (a killed study leaves no stage running). Its log ends with its exit code and wall time."""
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    for name, value in thread_settings.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    started = time.monotonic()
    with open(log_path, "wb") as log:
        rc = subprocess.run(["bash", "-c", cmd], cwd=wdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent).returncode
        log.write(f"[pvr-pipe study] exit {rc} after {time.monotonic() - started:.1f} s\n".encode())
    return rc


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class StudyOutcome:
    ran: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)       # or restored from DVC's run cache
    failed: dict[str, str] = field(default_factory=dict)      # stage -> its log
    not_run: list[str] = field(default_factory=list)          # below a failed stage


def open_client(workers: int | None, scheduler: str | None):
    """A Dask client: of the scheduler at `scheduler`, or of a local cluster of `workers` processes."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    import torch

    gpus = torch.cuda.device_count()
    cluster = LocalCluster(n_workers=workers or os.cpu_count(), threads_per_worker=1, processes=True,
                           resources={"GPU": gpus} if gpus else None, dashboard_address=None)
    return Client(cluster)


def run_study(graph: StageGraph, client, root: Path,
              on_change: Callable[[dict[str, int]], None] = lambda counts: None) -> StudyOutcome:
    from dask.distributed import as_completed

    outcome = StudyOutcome()
    order = {stage.name: i for i, stage in enumerate(graph.stages)}
    waiting = {stage.name: stage for stage in graph.stages}
    finished: set[str] = set()
    running: dict[str, tuple[str, Path]] = {}
    logs = root.resolve() / LOG_DIR   # absolute: a worker started elsewhere has another working folder
    logs.mkdir(parents=True, exist_ok=True)
    futures = as_completed()

    def counts() -> dict[str, int]:
        return {"done": len(outcome.ran) + len(outcome.up_to_date), "running": len(running),
                "failed": len(outcome.failed), "left": len(waiting) + len(outcome.not_run)}

    def submit_ready() -> None:
        progressed = True
        while progressed:   # a stage found up to date can make the ones below it ready
            progressed = False
            for name in sorted(waiting, key=order.get):
                stage = waiting[name]
                if not all(up in finished for up in stage.upstream):
                    continue
                del waiting[name]
                if not graph.prepare(name):
                    outcome.up_to_date.append(name)
                    finished.add(name)
                    progressed = True
                    continue
                log = logs / f"{name}.log"
                future = client.submit(run_stage_command, stage.cmd, stage.wdir, str(log), DRIVER_THREAD_SETTINGS,
                                       key=f"stage-{name}",
                                       pure=False, priority=-order[name],
                                       resources={"GPU": 1} if stage.needs_gpu else None)
                running[future.key] = (name, log)
                futures.add(future)
        on_change(counts())

    def drop_below(failed: str) -> None:
        for name in [name for name, stage in waiting.items() if failed in stage.upstream]:
            if name in waiting:
                del waiting[name]
                outcome.not_run.append(name)
                drop_below(name)

    submit_ready()
    for future in futures:
        name, log = running.pop(future.key)
        if future.status == "finished" and future.result() == 0:
            graph.record(name)
            outcome.ran.append(name)
            finished.add(name)
        else:   # a nonzero exit, or the task itself failed on its worker (then no log may exist)
            error = future.exception() if future.status == "error" else None
            outcome.failed[name] = str(log) + (f" (the task failed: {error!r})" if error else "")
            drop_below(name)
        submit_ready()
    return outcome

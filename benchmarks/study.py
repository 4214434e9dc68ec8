"""The study on Dask against a serial `dvc repro`, from the same state: wall time and dvc.lock hashes.

Three copies of the workspace as it is now (tracked and unignored files; no dvc.lock, data or
cache) each run one study from nothing: with `dvc repro`; with `pvr-pipe study --workers N` (a local cluster);
and with `pvr-pipe study --scheduler ADDRESS` against a scheduler and N workers started apart with
the `dask` CLI on loopback, as on other machines. Prints JSON with the wall times, the ratio
`dask_over_serial` (local cluster over serial; target <= 0.8 on 2 cores), whether every stage's
output hashes in dvc.lock are those of the serial run, and whether `dvc status` is clean.

    python benchmarks/study.py                      # the default study (params.yaml), ~1 h on 2 cores
    python benchmarks/study.py --set study.seeds=[0] --set 'study.encoders=[pixels,state]'
    python benchmarks/study.py --keep /tmp/study-bench   # keep the three workspaces
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def copy_workspace(root: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for file in files:
        if (REPO / file).is_file() and not file.startswith("benchmarks/results/") and file != "dvc.lock":
            (root / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / file, root / file)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench"]):
        subprocess.run(command, cwd=root, check=True)
    return root


def timed(command: list[str], cwd: Path) -> float:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    started = time.monotonic()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed in {cwd}:\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def dask_cli_cluster(workers: int, folder: Path) -> tuple[str, list[subprocess.Popen]]:
    """A scheduler and `workers` single-threaded workers, each its own `dask` CLI process."""
    scheduler_file = folder / "scheduler.json"
    processes = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--scheduler-file", str(scheduler_file), "--no-dashboard"],
                                  stderr=subprocess.DEVNULL)]
    while not scheduler_file.exists():
        time.sleep(0.1)
    time.sleep(1)
    address = json.loads(scheduler_file.read_text())["address"]
    processes += [subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                    "--no-dashboard"], stderr=subprocess.DEVNULL) for _ in range(workers)]
    return address, processes


def dvc_status_clean(root: Path) -> bool:
    result = subprocess.run([str(BIN / "dvc"), "status"], cwd=root, capture_output=True, text=True)
    return result.returncode == 0 and "up to date" in result.stdout


def stage_outputs(root: Path) -> dict[str, dict[str, str]]:
    """Each stage in dvc.lock: its outputs' hashes."""
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: {out["path"]: out["md5"] for out in stage.get("outs", [])} for name, stage in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="params.yaml", help="study file (default: the default study)")
    parser.add_argument("--set", dest="settings", action="append", default=[], help="as `pvr-pipe study --set`")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--keep", type=Path, help="keep the workspaces in this new folder (default: removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pvr-pipe-study-bench-") as tmp:
        top = args.keep or Path(tmp)
        sets = [part for setting in args.settings for part in ("--set", setting)]
        study = [str(BIN / "pvr-pipe"), "study", args.study, *sets]
        serial, local, apart = (copy_workspace(top / name) for name in ("serial", "dask", "dask-cli"))
        for root in (serial, local, apart):
            timed([*study, "--no-run"], root)
        serial_s = timed([str(BIN / "dvc"), "repro"], serial)
        dask_s = timed([*study, "--workers", str(args.workers), "--quiet"], local)
        address, cluster = dask_cli_cluster(args.workers, top)
        try:
            cli_s = timed([*study, "--scheduler", address, "--quiet"], apart)
        finally:
            for process in cluster:
                process.terminate()
                process.wait(timeout=60)
        expected = stage_outputs(serial)
        result = {"benchmark": "study", "study": args.study, "settings": args.settings, "stages": len(expected),
                  "workers": args.workers, "serial_dvc_repro_s": round(serial_s, 1),
                  "dask_study_s": round(dask_s, 1), "dask_cli_cluster_study_s": round(cli_s, 1),
                  "dask_over_serial": round(dask_s / serial_s, 3),
                  "dask_cli_cluster_over_serial": round(cli_s / serial_s, 3),
                  "identical_dvc_lock_hashes": stage_outputs(local) == expected,
                  "identical_dvc_lock_hashes_cli_cluster": stage_outputs(apart) == expected,
                  "dvc_status_clean": all(dvc_status_clean(root) for root in (serial, local, apart)),
                  "machine": f"{platform.machine()}, {os.cpu_count()} cpus"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

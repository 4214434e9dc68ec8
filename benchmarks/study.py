"""The study on Dask against a serial `dvc repro`, from the same state: wall time and dvc.lock hashes.

Two copies of the workspace as it is now (tracked and unignored files, no data, no cache) each
run one study from nothing: one with `dvc repro`, one with `pvr-pipe study --workers N`. Prints
JSON with both wall times, their ratio (`dask_over_serial`, target <= 0.8 on 2 cores) and whether
every stage's output hashes in dvc.lock are the same.

    python benchmarks/study.py                      # the default study (params.yaml), ~2 h on 2 cores
    python benchmarks/study.py --set study.seeds=[0] --set 'study.encoders=[pixels,state]'
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
        if (REPO / file).is_file() and not file.startswith("benchmarks/results/"):
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


def stage_outputs(root: Path, names: set[str]) -> dict[str, dict[str, str]]:
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: {out["path"]: out["md5"] for out in stages[name].get("outs", [])} for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="params.yaml", help="study file (default: the default study)")
    parser.add_argument("--set", dest="settings", action="append", default=[], help="as `pvr-pipe study --set`")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pvr-pipe-study-bench-") as tmp:
        sets = [part for setting in args.settings for part in ("--set", setting)]
        serial, parallel = copy_workspace(Path(tmp) / "serial"), copy_workspace(Path(tmp) / "dask")
        for root in (serial, parallel):
            timed([str(BIN / "pvr-pipe"), "study", args.study, *sets, "--no-run"], root)
        serial_s = timed([str(BIN / "dvc"), "repro"], serial)
        dask_s = timed([str(BIN / "pvr-pipe"), "study", args.study, *sets, "--workers", str(args.workers),
                        "--quiet"], parallel)
        from dvc.repo import Repo

        with Repo(str(serial)) as repo:
            names = {stage.addressing for stage in repo.index.stages}
        identical = stage_outputs(serial, names) == stage_outputs(parallel, names)
    print(json.dumps({"benchmark": "study", "study": args.study, "settings": args.settings, "stages": len(names),
                      "workers": args.workers, "serial_dvc_repro_s": round(serial_s, 1),
                      "dask_study_s": round(dask_s, 1), "dask_over_serial": round(dask_s / serial_s, 3),
                      "identical_dvc_lock_hashes": identical,
                      "machine": f"{platform.machine()}, {os.cpu_count()} cpus"}, indent=2))


if __name__ == "__main__":
    main()

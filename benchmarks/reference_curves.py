"""Our agents' learning curves from nothing against the published ones (TD-MPC2, DreamerV3) on DeepMind Control.

For every task x encoder x world model x seed, `pvr-pipe finetune` learns from nothing
(`--store ... --world-model ... --preset ... --offline-fraction 0`) for `--env-steps` agent
steps, evaluating every `--eval-every` steps. Each run's learning curve is drawn with mean and
min-max over the seeds, over the published curve of the same algorithm (tdmpc: TD-MPC2, dreamer:
DreamerV3) and observation (encoder `state`: state; `pixels` and every PVR: pixels). The published
returns are in `benchmarks/reference/published_dmc_returns.csv`; its README names the sources.

    # state targets: tdmpc for 100k agent steps (200k simulator steps), dreamer for 50k (100k)
    python benchmarks/reference_curves.py --tasks cartpole-balance cartpole-swingup --encoders state \\
        --world-models tdmpc dreamer --env-steps tdmpc=100000 dreamer=50000 --seeds 0 1 2 --jobs 2
    # pixel targets
    python benchmarks/reference_curves.py --tasks finger-spin --encoders pixels --world-models tdmpc
    python benchmarks/reference_curves.py --tasks cartpole-balance --encoders pixels --world-models dreamer \\
        --env-steps 25000
    # the same selection with --plot-only: plot the runs as far as they got, start nothing
    python benchmarks/reference_curves.py --tasks ... --plot-only

Each invocation rewrites the JSON and PNG of its tasks with the runs it selects, finished or
not. To draw several invocations' runs together, rerun with their union and `--plot-only`.

Seeds carry across machines. Every run summarised also writes its record, its summary and its
evaluations up to its checkpoint, to `--out`/reference_curves_runs/<task>/<encoder>/<run>/seed<s>.json
(committed with the results). A seed whose run directory is not in `--workdir` is taken from its
record: a finished record is drawn and not rerun, so seeds measured on different machines or
in different sessions plot together (`"from_record"` in the JSON names the file). A run
directory, where there is one, always wins over its record and rewrites it.

Steps. `--env-steps` (default tdmpc 100000, dreamer 50000), `--eval-every` and
`--episode-steps` count agent steps, as `pvr-pipe finetune` does. An agent step is
`action_repeat` simulator (physics) steps. pvr-pipe's DMC default is 2, so an episode is 1000
simulator steps or 500 agent steps. TD-MPC2 logs agent steps at repeat 2: its "100k" is 200k
simulator steps. DreamerV3's score files log simulator steps. Curves, ratios and targets always
compare at equal simulator steps. `--x-axis simulator` (the default) plots simulator steps for
both; `--x-axis agent` labels the same axis in agent steps (simulator steps / our action
repeat). The axis label says which.

What runs (all under `--workdir`, default `benchmarks/runs/`, which git ignores):
- `pvr-pipe collect --env dmc/<task> --variant train --episodes <--data-episodes> --seed 0
  --out W/data/<task>`: a small random dataset. It only fixes the env, look and encoder;
  `--offline-fraction 0` means it is never trained on.
- `pvr-pipe encode --model <encoder> --dataset W/data/<task> --out W/stores/<task>/<encoder>.zarr`.
- `pvr-pipe finetune --store ... --world-model <wm> --preset <p> --offline-fraction 0 --seed <s>
  --env-steps N --eval-every E --eval-episodes K --train-ratio ... --threads 1 --[no-]compile
  --out W/runs/<task>/<encoder>/<wm>-<preset>/seed<s>`. A train ratio other than the reference
  one, a `--seed-steps` and an `--episode-steps` are named in the directory
  (`<wm>-<preset>-tr1-ss0-ep100`), and so is each `--set WM:KEY=VALUE`, which passes
  `finetune --set KEY=VALUE` to that world model's runs (`dreamer-xs-actor_grad=dynamics`).
  Logs go to `W/logs/` beside it: each launch is appended, and
  the wall time of each launch is kept in a `.json` next to the log.
Defaults follow the reference configs.
- Train ratio, in updates per agent step: tdmpc 1 (TD-MPC2: one update per step). dreamer 0.5:
  danijar/dreamerv3's configs.yaml with DMC at action repeat 2 (commit bb9e420) sets
  train_ratio 512 replayed steps per step for both dmc_proprio and dmc_vision, at batch
  16 x 64 = 1024 replayed steps per update. The repository's later config runs DMC at action
  repeat 1, with 1024 for proprio and 256 for vision. To follow it instead, pass
  `--train-ratio dreamer=1` (proprio) or `dreamer=0.25` (vision).
- Random-action seed steps: `pvr-pipe finetune`'s default unless `--seed-steps` is given. That
  default is TD-MPC2's max(1000, 5 x episode length) = 2500 for tdmpc from nothing, and 0 for
  dreamer (DreamerV3's train_fill 0). The runs record the value, and so does the JSON.
- `--preset m` is the published size (TD-MPC2's 5M; DreamerV3's size12m).

Restartable. Rerunning the same command continues every run from its last checkpoint and skips
finished ones. Collect and encode resume too, and do nothing once complete. A larger
`--env-steps` continues finished runs. Changing `--eval-every`, `--eval-episodes` or
`--num-envs` for an existing run is refused by `pvr-pipe finetune`, and the benchmark reports
it as a failed run.
`--jobs N` runs N commands at once, each pinned to one core of `--cores` (default: the cores
this process may use) with `taskset -c <core>` and `--threads 1`. Two runs on one core each use a
2-core machine better than one run on both. A failed command is reported with its command line
and log, and the others go on. The exit code is 1 if any command failed.

Output. `--out` (default `benchmarks/results/`) gets `reference_curves_<task>.json` and
`reference_curves_<task>.png` per task. The PNG has one panel per world model x encoder: our
mean with its min-max band, the published mean with its band, the random policy's return, and
the targets. The whole document also goes to stdout. Per task and world model x encoder
("curves"), the JSON holds:
- the run settings: preset, train ratio, seed steps (as the runs recorded them), action repeat.
- per seed: status (finished, partial, not started, failed), agent and simulator steps reached,
  its last evaluation, wall time summed over launches, agent steps/s, updates, the random
  policy's return, the run directory and log, and the command.
- `ours`: mean, min and max over seeds at every evaluation point, in both units, with the number
  of seeds that reached it.
- `published`: its points (mean, min, max, seeds) with source and method, or why there is none.
- `last_point`: the last evaluation that every started seed reached. It gives our mean there,
  the published mean interpolated linearly at the same simulator step (null outside the
  published range), their ratio, and `target_ratio` 0.85 when the point is one a target names.
- `targets`: each target for this curve (its simulator step, the published mean there, our
  mean if reached (interpolated between evaluations if none falls on it), the ratio, 0.85, and
  whether it is met).
Targets (ratio ours / published mean >= 0.85): tdmpc/state cartpole-balance and cartpole-swingup
at 200k simulator steps (TD-MPC2 998 and 839); dreamer/state cartpole-balance and
cartpole-swingup at 50k (DreamerV3 proprio 490 and 322) and 100k (840 and 528); tdmpc/pixels
finger-spin at 200k (TD-MPC2 pixels 981); dreamer/pixels cartpole-balance at 50k (DreamerV3
vision 613). `--episode-steps` caps episodes: the curves are then not comparable to the published
ones, and the JSON says so.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import yaml

REPO = Path(__file__).resolve().parent.parent
PUBLISHED_CSV = REPO / "benchmarks" / "reference" / "published_dmc_returns.csv"
ALGORITHM = {"tdmpc": "tdmpc2", "dreamer": "dreamerv3"}
ALGORITHM_NAME = {"tdmpc2": "TD-MPC2", "dreamerv3": "DreamerV3"}
REFERENCE_TRAIN_RATIO = {"tdmpc": 1.0, "dreamer": 0.5}      # updates per agent step (see the docstring)
DEFAULT_ENV_STEPS = {"tdmpc": 100_000, "dreamer": 50_000}   # agent steps: the targets' last points
DEFAULT_ACTION_REPEAT = 2                                   # pvr-pipe's DMC default
TARGET_RATIO = 0.85
# (world model, encoder, task) -> simulator steps at which ours / published mean should reach TARGET_RATIO.
TARGETS: dict[tuple[str, str, str], list[int]] = {
    ("tdmpc", "state", "cartpole-balance"): [200_000],
    ("tdmpc", "state", "cartpole-swingup"): [200_000],
    ("dreamer", "state", "cartpole-balance"): [50_000, 100_000],
    ("dreamer", "state", "cartpole-swingup"): [50_000, 100_000],
    ("tdmpc", "pixels", "finger-spin"): [200_000],
    ("dreamer", "pixels", "cartpole-balance"): [50_000],
}


# ---------------------------------------------------------------- pure parts (tests/test_reference_curves.py)

def observation_of(encoder: str) -> str:
    """The published curve an encoder is held against: `state` for the state baseline, else pixels."""
    return "state" if encoder == "state" else "pixels"


def task_name(task: str) -> str:
    name = task.removeprefix("dmc/")
    if "/" in name or "-" not in name:
        raise ValueError(f"task '{task}' is not a DeepMind Control task (<domain>-<task>, e.g. cartpole-balance)")
    return name


def load_published(path: Path = PUBLISHED_CSV) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(algorithm, observation, task) -> {source, method, seeds, points sorted by simulator steps}."""
    curves: dict[tuple[str, str, str], dict[str, Any]] = {}
    with Path(path).open(newline="") as rows:
        for row in csv.DictReader(rows):
            key = (row["algorithm"], row["observation"], row["task"])
            curve = curves.setdefault(key, {"algorithm": row["algorithm"], "observation": row["observation"],
                                            "task": row["task"], "source": row["source"], "method": row["method"],
                                            "logged_x_unit": row["logged_x_unit"], "seeds": int(row["seeds"]),
                                            "points": []})
            curve["points"].append({"simulator_steps": int(row["simulator_steps"]),
                                    "agent_steps_at_repeat_2": int(row["agent_steps_at_repeat_2"]),
                                    "mean": float(row["mean_return"]), "min": float(row["min_seed"]),
                                    "max": float(row["max_seed"])})
    for curve in curves.values():
        curve["points"].sort(key=lambda point: point["simulator_steps"])
    return curves


def interpolate(points: list[dict[str, Any]], x: float, x_key: str = "simulator_steps",
                y_key: str = "mean") -> float | None:
    """Linear interpolation of y at x between the points (sorted by x); None outside their range."""
    if not points or x < points[0][x_key] or x > points[-1][x_key]:
        return None
    for left, right in zip(points, points[1:]):
        if left[x_key] <= x <= right[x_key]:
            if right[x_key] == left[x_key]:
                return float(left[y_key])
            share = (x - left[x_key]) / (right[x_key] - left[x_key])
            return float(left[y_key] + share * (right[y_key] - left[y_key]))
    return float(points[-1][y_key])          # a single point, at x


def aggregate(curves: dict[int, list[tuple[int, float]]], action_repeat: int) -> list[dict[str, Any]]:
    """Per evaluation step (agent steps): mean, min and max over the seeds that reached it."""
    steps = sorted({step for curve in curves.values() for step, _ in curve})
    points = []
    for step in steps:
        values = [value for curve in curves.values() for s, value in curve if s == step]
        points.append({"agent_steps": step, "simulator_steps": step * action_repeat, "seeds": len(values),
                       "mean": round(sum(values) / len(values), 2), "min": round(min(values), 2),
                       "max": round(max(values), 2)})
    return points


def last_common_step(curves: dict[int, list[tuple[int, float]]]) -> int | None:
    """The last evaluation step that every seed with a curve reached."""
    started = [{step for step, _ in curve} for curve in curves.values() if curve]
    common = set.intersection(*started) if started else set()
    return max(common) if common else None


def ratio(ours: float | None, published: float | None) -> float | None:
    if ours is None or published is None or published == 0:
        return None
    return round(ours / published, 3)


def compare(ours: list[dict[str, Any]], last_step: int | None, published: dict[str, Any] | None,
            targets: list[int], action_repeat: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The last common point against the published mean there, and every target of the curve."""
    points = published["points"] if published else []
    last = None
    if last_step is not None:
        point = next(p for p in ours if p["agent_steps"] == last_step)
        sim = point["simulator_steps"]
        pub = interpolate(points, sim)
        last = {"agent_steps": last_step, "simulator_steps": sim, "seeds": point["seeds"],
                "ours_mean": point["mean"], "ours_min": point["min"], "ours_max": point["max"],
                "published_mean": None if pub is None else round(pub, 2), "ratio": ratio(point["mean"], pub),
                "target_ratio": TARGET_RATIO if sim in targets else None}
        if pub is None and published:
            last["why_no_ratio"] = (f"{sim} simulator steps lies outside the published curve "
                                    f"({points[0]['simulator_steps']}-{points[-1]['simulator_steps']})")
    rows = []
    reached = [p for p in ours if last_step is not None and p["agent_steps"] <= last_step]
    for sim in targets:
        pub = interpolate(points, sim)
        mine = interpolate(reached, sim, x_key="simulator_steps") if reached else None
        exact = any(p["simulator_steps"] == sim for p in reached)
        value = ratio(mine, pub)
        rows.append({"simulator_steps": sim,
                     "agent_steps": sim // action_repeat if sim % action_repeat == 0 else sim / action_repeat,
                     "published_mean": None if pub is None else round(pub, 2),
                     "reached": mine is not None, "ours_mean": None if mine is None else round(mine, 2),
                     "ours_interpolated": mine is not None and not exact, "ratio": value,
                     "target_ratio": TARGET_RATIO, "met": None if value is None else value >= TARGET_RATIO})
    return last, rows


def read_tsv(path: Path) -> list[tuple[int, float]]:
    """A dvclive plot TSV (`step<TAB>value`) as (step, value) pairs; empty if absent."""
    if not path.is_file():
        return []
    with path.open(newline="") as rows:
        reader = csv.reader(rows, delimiter="\t")
        header = next(reader, None)
        if not header or "step" not in header:
            return []
        step_at = header.index("step")
        value_at = 1 - step_at if len(header) == 2 else next(i for i, name in enumerate(header) if name != "step")
        return [(int(row[step_at]), float(row[value_at])) for row in reader if len(row) == len(header)]


def run_dir_name(world_model: str, preset: str, train_ratio: float, seed_steps: int | None,
                 episode_steps: int | None, settings: dict[str, str] | None = None) -> str:
    name = f"{world_model}-{preset}"
    for key, value in sorted((settings or {}).items()):
        name += f"-{key}={value}"
    if train_ratio != REFERENCE_TRAIN_RATIO[world_model]:
        name += f"-tr{train_ratio:g}"
    if seed_steps is not None:
        name += f"-ss{seed_steps}"
    if episode_steps:
        name += f"-ep{episode_steps}"
    return name


def bad_input(message: str) -> NoReturn:
    """What is wrong with the command line, in one line on stderr; exit code 2."""
    print(f"reference_curves.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_settings(values: list[str] | None, world_models: list[str]) -> dict[str, dict[str, str]]:
    """`--set dreamer:actor_grad=dynamics` -> {"dreamer": {"actor_grad": "dynamics"}}; `--set KEY=VALUE`
    without a world model sets it for every world model run."""
    chosen: dict[str, dict[str, str]] = {wm: {} for wm in ALGORITHM}
    for value in values or []:
        target, _, setting = value.rpartition(":")
        key, equals, text = setting.partition("=")
        if not equals or not key or not text:
            bad_input(f"--set: '{value}' is not [WORLD_MODEL:]KEY=VALUE")
        if target and target not in ALGORITHM:
            bad_input(f"--set: unknown world model '{target}' (dreamer, tdmpc)")
        for wm in [target] if target else world_models:
            chosen[wm][key] = text
    return chosen


def parse_per_world_model(values: list[str] | None, world_models: list[str], kind: type, flag: str) -> dict:
    """`--train-ratio 1` (every world model) or `--train-ratio dreamer=1 tdmpc=1`."""
    chosen: dict[str, Any] = {}
    for value in values or []:
        name, _, number = value.rpartition("=")
        try:
            parsed = kind(number)
        except ValueError:
            bad_input(f"{flag}: '{value}' is not a number or WORLD_MODEL=NUMBER")
        if not name:
            chosen.update({wm: parsed for wm in world_models})
        elif name in ALGORITHM:
            chosen[name] = parsed
        else:
            bad_input(f"{flag}: unknown world model '{name}' (dreamer, tdmpc)")
    return chosen


# ---------------------------------------------------------------- running commands

@dataclass
class Job:
    name: str
    command: list[str]
    log: Path
    deps: list[str] = field(default_factory=list)
    run_dir: Path | None = None          # fine-tunes: its --out (progress is read from there)
    total: int = 1
    wall_file: Path | None = None        # fine-tunes: wall time of each launch
    record_file: Path | None = None      # fine-tunes: the seed's record (summary and curve)
    status: str = "queued"               # queued, running, done, failed, skipped, blocked
    rc: int | None = None
    wall_s: float = 0.0
    core: int | None = None
    process: subprocess.Popen | None = None
    started: float = 0.0
    launch: dict | None = None


def _die_with_parent():
    """Children get SIGTERM if the benchmark dies (even by SIGKILL): no orphan keeps writing a run."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    return lambda: libc.prctl(1, int(signal.SIGTERM))      # PR_SET_PDEATHSIG


def pvr_pipe() -> list[str]:
    script = Path(sys.executable).with_name("pvr-pipe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "stages.cli"]


def run_progress(run_dir: Path) -> int:
    """Agent steps a run has played (its last finished round); cheap, for the progress bar."""
    rounds = read_tsv(run_dir / "live" / "plots" / "metrics" / "train" / "episode_return.tsv")
    return rounds[-1][0] if rounds else 0


def checkpoint_progress(run_dir: Path) -> dict[str, Any] | None:
    """The counters of the run's checkpoint (agent steps, updates), or None without one."""
    path = run_dir / "agent.safetensors"
    if not path.is_file():
        return None
    from pipeline.errors import UserError
    from pipeline.storage.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path)["progress"]
    except UserError:  # being replaced right now, or damaged: the run itself will say
        return None


def _write_wall(job: Job) -> None:
    if job.wall_file is None or job.launch is None:
        return
    data = json.loads(job.wall_file.read_text()) if job.wall_file.is_file() else {"launches": []}
    launches = [launch for launch in data["launches"] if launch["started"] != job.launch["started"]]
    data["launches"] = launches + [job.launch]
    tmp = job.wall_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(job.wall_file)


def schedule(jobs: list[Job], n_jobs: int, cores: list[int] | None, quiet: bool) -> None:
    """Run the jobs, at most n_jobs at once, each after its deps, each pinned to the least busy core."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    by_name = {job.name: job for job in jobs}
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    preexec = _die_with_parent()
    busy: dict[int, int] = {core: 0 for core in cores or []}
    console = Console(stderr=True)
    plain = not quiet and not console.is_terminal     # a log file: one line per start and end instead of bars
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[status]}"), console=console, auto_refresh=False,
                        disable=quiet or plain)

    def say(text: str) -> None:
        if plain:
            console.print(f"{datetime.now().strftime('%H:%M:%S')} {text}", highlight=False, soft_wrap=True)

    bars = {job.name: progress.add_task(job.name, total=job.total, status=job.status,
                                        completed=run_progress(job.run_dir) if job.run_dir else 0) for job in jobs}

    def finish(job: Job, rc: int) -> None:
        job.rc, job.wall_s = rc, time.monotonic() - job.started
        job.status = "done" if rc == 0 else "failed"
        if job.core is not None:
            busy[job.core] -= 1
        if job.launch is not None:
            job.launch.update(wall_s=round(job.wall_s, 1), rc=rc)
            _write_wall(job)
        done = job.total if rc == 0 else (run_progress(job.run_dir) if job.run_dir else 0)
        progress.update(bars[job.name], completed=done, status=job.status if rc == 0 else
                        f"[red]failed (rc {rc}), log {job.log}")
        if rc:
            console.print(f"{datetime.now().strftime('%H:%M:%S')} [red]failed[/red] {job.name} (rc {rc} after "
                          f"{job.wall_s:.0f} s), log {job.log}", soft_wrap=True, highlight=False)
        else:
            say(f"{job.status} {job.name} after {job.wall_s:.0f} s")

    def start(job: Job) -> None:
        command = job.command
        if busy:
            job.core = min(busy, key=lambda core: (busy[core], core))
            busy[job.core] += 1
            command = ["taskset", "-c", str(job.core), *command]
            job.command = command
        job.log.parent.mkdir(parents=True, exist_ok=True)
        log = job.log.open("a")
        log.write(f"=== {datetime.now(timezone.utc).isoformat(timespec='seconds')} {shlex.join(command)}\n")
        log.flush()
        job.started, job.status = time.monotonic(), "running"
        job.launch = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_s": 0.0,
                      "rc": None, "command": shlex.join(command)}
        job.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, preexec_fn=preexec)
        log.close()
        where = f" on core {job.core}" if job.core is not None else ""
        progress.update(bars[job.name], status="running" + where)
        say(f"start {job.name}{where}")

    def stop_all(signum=None, frame=None):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop_all)
    last_wall_write = 0.0
    try:
        with progress:
            while True:
                running = [job for job in jobs if job.status == "running"]
                for job in running:
                    rc = job.process.poll()
                    if rc is not None:
                        finish(job, rc)
                    elif job.run_dir is not None:
                        progress.update(bars[job.name], completed=run_progress(job.run_dir))
                for job in jobs:
                    if job.status == "queued" and any(by_name[d].status in ("failed", "blocked") for d in job.deps):
                        job.status = "blocked"
                        say(f"not run: {job.name} (a command it needs failed)")
                        progress.update(bars[job.name], status="[yellow]not run: a command it needs failed")
                running = [job for job in jobs if job.status == "running"]
                ready = [job for job in jobs if job.status == "queued"
                         and all(by_name[d].status in ("done", "skipped") for d in job.deps)]
                for job in ready[:max(n_jobs - len(running), 0)]:
                    start(job)
                if not any(job.status in ("queued", "running") for job in jobs):
                    break
                if time.monotonic() - last_wall_write > 15:
                    for job in jobs:
                        if job.status == "running" and job.launch is not None:
                            job.launch["wall_s"] = round(time.monotonic() - job.started, 1)
                            _write_wall(job)
                    last_wall_write = time.monotonic()
                progress.refresh()
                time.sleep(1.0)
            progress.refresh()
    except KeyboardInterrupt:
        for job in jobs:
            if job.status == "running":
                job.process.terminate()
        for job in jobs:
            if job.status == "running":
                try:
                    job.process.wait(30)
                except subprocess.TimeoutExpired:
                    job.process.kill()
                    job.process.wait()
                if job.launch is not None:
                    job.launch.update(wall_s=round(time.monotonic() - job.started, 1), rc="interrupted")
                    _write_wall(job)
        print("interrupted; rerun the same command to continue where every run stopped", file=sys.stderr)
        raise SystemExit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- the report

def action_repeat_of(workdir: Path, task: str) -> int:
    manifest = workdir / "data" / task / "manifest.json"
    if manifest.is_file():
        return int(json.loads(manifest.read_text()).get("action_repeat") or DEFAULT_ACTION_REPEAT)
    return DEFAULT_ACTION_REPEAT


def read_record(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def finished_record(path: Path, env_steps: int) -> bool:
    record = read_record(path)
    return record is not None and record["summary"]["agent_steps_reached"] >= env_steps


def summarise_run(run_dir: Path, seed: int, env_steps: int, action_repeat: int, job: Job | None,
                  wall_file: Path, log: Path, command: list[str],
                  record_file: Path) -> tuple[dict[str, Any], list[tuple[int, float]]]:
    """One seed: how far it got, its curve (rows past its checkpoint dropped: they will be redone).
    From its run directory, whose summary and curve then go to `record_file`; without one, from
    `record_file` if there is one."""
    info = yaml.safe_load((run_dir / "finetune.yaml").read_text()) if (run_dir / "finetune.yaml").is_file() else None
    record = read_record(record_file)
    if info is None and record is not None and not (job is not None and job.status == "failed"):
        summary = record["summary"] | {"from_record": str(record_file.relative_to(REPO))
                                       if record_file.is_relative_to(REPO) else str(record_file)}
        if summary["status"] == "finished" and summary["agent_steps_reached"] < env_steps:
            summary["status"] = "partial"
        return summary, [(int(step), float(value)) for step, value in record["curve"]]
    saved = checkpoint_progress(run_dir)
    reached = saved["env_steps"] if saved else 0
    metrics = run_dir / "live" / "plots" / "metrics"
    curve = [(step, value) for step, value in read_tsv(metrics / "eval" / "return.tsv") if step <= reached]
    if job is not None and job.status in ("failed", "blocked"):
        status = "failed" if job.status == "failed" else "not run (a command it needs failed)"
    elif info is None:
        status = "not started"
    else:
        status = "finished" if reached >= env_steps else "partial"
    wall = json.loads(wall_file.read_text())["launches"] if wall_file.is_file() else []
    speed = read_tsv(run_dir / "timing" / "plots" / "metrics" / "agent_steps_per_s.tsv")
    updates = read_tsv(metrics / "train" / "updates.tsv")
    summary = {"seed": seed, "status": status, "agent_steps_reached": reached,
               "simulator_steps_reached": reached * action_repeat,
               "last_eval": ({"agent_steps": curve[-1][0], "return": round(curve[-1][1], 2)} if curve else None),
               "evaluations": len(curve),
               "wall_s": round(sum(launch["wall_s"] for launch in wall), 1) if wall else None, "launches": len(wall),
               "agent_steps_per_s": round(speed[-1][1], 2) if speed and reached else None,
               "updates": int(updates[-1][1]) if updates and reached else None,
               "random_return": round(info["random_return"], 2) if info and "random_return" in info else None,
               "seed_steps": (info or {}).get("identity", {}).get("seed_steps"),
               "train_ratio": (info or {}).get("identity", {}).get("train_ratio"),
               "out": str(run_dir), "log": str(log), "command": shlex.join(command)}
    if job is not None and job.status == "failed":
        summary["rc"] = job.rc
    if info is not None:
        record_file.parent.mkdir(parents=True, exist_ok=True)
        record_file.write_text(json.dumps({"summary": summary, "curve": curve}, indent=1) + "\n")
    return summary, curve


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def plot_task(task: str, groups: list[dict[str, Any]], x_axis: str, path: Path,
              preset: str, seeds: list[int], episode_steps: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    world_models = list(dict.fromkeys(group["world_model"] for group in groups))
    encoders = list(dict.fromkeys(group["encoder"] for group in groups))
    fig, axes = plt.subplots(len(world_models), len(encoders), figsize=(5.6 * len(encoders), 3.9 * len(world_models)),
                             squeeze=False)
    for group in groups:
        ax = axes[world_models.index(group["world_model"])][encoders.index(group["encoder"])]
        repeat = group["action_repeat"]
        scale = 1.0 if x_axis == "simulator" else 1.0 / repeat    # simulator steps -> plotted x
        reached = max((p["simulator_steps"] for p in group["ours"]), default=0)
        x_max = max(group["env_steps"] * repeat, reached) * scale
        notes = []
        published = group["published"]
        if published:
            points = published["points"]
            beyond = next((i for i, p in enumerate(points) if p["simulator_steps"] * scale >= x_max), len(points) - 1)
            shown = points[:beyond + 1]
            xs = [p["simulator_steps"] * scale for p in shown]
            ax.fill_between(xs, [p["min"] for p in shown], [p["max"] for p in shown], color="tab:gray", alpha=0.2,
                            linewidth=0, label=f"published min-max ({_count(published['seeds'], 'seed')})")
            ax.plot(xs, [p["mean"] for p in shown], "--", color="black", marker=".",
                    label=f"{ALGORITHM_NAME[published['algorithm']]} {published['observation']} (published mean)")
            if points[0]["simulator_steps"] * scale > x_max:
                notes.append(f"the published curve starts at {points[0]['simulator_steps'] * scale:,.0f} "
                             f"{'simulator' if x_axis == 'simulator' else 'agent'} steps")
        else:
            notes.append(group["published_missing"])
        ours = group["ours"]
        if ours:
            xs = [p["simulator_steps"] * scale for p in ours]
            ax.fill_between(xs, [p["min"] for p in ours], [p["max"] for p in ours], color="tab:blue", alpha=0.25,
                            linewidth=0, label=f"ours min-max ({_count(sum(1 for run in group['runs'] if run['evaluations']), 'seed')})")
            ax.plot(xs, [p["mean"] for p in ours], "-o", color="tab:blue", markersize=3,
                    label=f"ours: {group['world_model']} {group['encoder']} (mean)"
                          + "".join(f", {key}={value}" for key, value in sorted(group["settings"].items())))
        randoms = [run["random_return"] for run in group["runs"] if run["random_return"] is not None]
        if randoms:
            ax.axhline(sum(randoms) / len(randoms), color="tab:red", linestyle=":", linewidth=1,
                       label="random actions (ours, mean)")
        shown_targets = [t for t in group["targets"]
                         if t["published_mean"] is not None and t["simulator_steps"] * scale <= x_max * 1.02]
        for index, target in enumerate(shown_targets):
            ax.plot([target["simulator_steps"] * scale], [TARGET_RATIO * target["published_mean"]], marker="*",
                    markersize=11, color="tab:orange", linestyle="none",
                    label=f"target: {TARGET_RATIO} x published mean" if index == 0 else None)
        later = [t["simulator_steps"] for t in group["targets"] if t not in shown_targets]
        if later:
            notes.append("targets beyond this axis at " + ", ".join(f"{sim:,}" for sim in later) + " simulator steps")
        if notes:
            ax.text(0.5, 0.62, "\n".join(textwrap.fill(note, 60) for note in notes), transform=ax.transAxes,
                    ha="center", va="center", fontsize=7.5, color="dimgray")
        last = group["last_point"]
        if last and ours and last["agent_steps"] < ours[-1]["agent_steps"]:
            ax.axvline(last["simulator_steps"] * scale, color="tab:blue", linestyle=":", linewidth=1,
                       label="last point every seed reached")
        title = f"{group['world_model']} / {group['encoder']}"
        if last:
            unit = "sim" if x_axis == "simulator" else "agent"
            at = last["simulator_steps"] * scale
            title += f": at {at:,.0f} {unit} steps " + (f"ours/published = {last['ratio']:.2f}"
                                                         if last["ratio"] is not None else "no published value")
        else:
            title += ": no evaluation yet"
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, x_max * 1.02)
        ax.set_ylim(0, 1050)
        ax.set_xlabel("simulator steps (agent steps x action repeat %d)" % repeat if x_axis == "simulator"
                      else "agent steps (action repeat %d; simulator steps / %d)" % (repeat, repeat))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    for row, wm in enumerate(world_models):          # panels no group filled (should not happen)
        for col, encoder in enumerate(encoders):
            if not any(g["world_model"] == wm and g["encoder"] == encoder for g in groups):
                axes[row][col].set_visible(False)
    title = f"dmc/{task}: learning from nothing, preset {preset}, seeds {' '.join(map(str, seeds))}"
    if episode_steps:
        title += f"\nepisodes capped at {episode_steps} agent steps: not comparable to the published returns"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--tasks", nargs="+", default=["cartpole-balance", "cartpole-swingup"],
                        help="DMC tasks, <domain>-<task>")
    parser.add_argument("--encoders", nargs="+", default=["state"],
                        help="state, pixels or any PVR of `pvr-pipe models`")
    parser.add_argument("--world-models", nargs="+", default=["tdmpc"], choices=["tdmpc", "dreamer"])
    parser.add_argument("--preset", default="m", choices=["xs", "s", "m", "l"],
                        help="size (m: TD-MPC2's 5M, DreamerV3's size12m; xs for smoke tests)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--env-steps", nargs="+", metavar="[WM=]STEPS",
                        help="agent steps per run, for all or per world model (default: tdmpc 100000, dreamer 50000: "
                             "200k and 100k simulator steps, the targets' last points)")
    parser.add_argument("--eval-every", type=int, default=5000, help="agent steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--train-ratio", nargs="+", metavar="[WM=]RATIO",
                        help="updates per agent step, for all or per world model (default: tdmpc 1, dreamer 0.5)")
    parser.add_argument("--seed-steps", nargs="+", metavar="[WM=]STEPS",
                        help="random-action agent steps first (default: pvr-pipe finetune's: tdmpc from nothing "
                             "max(1000, 5 x episode length) as TD-MPC2, dreamer 0)")
    parser.add_argument("--num-envs", type=int, default=1, help="envs per run, stepped in parallel")
    parser.add_argument("--episode-steps", type=int, default=None,
                        help="cap on agent steps per episode (smoke tests only: not comparable to published)")
    parser.add_argument("--data-episodes", type=int, default=2, help="random episodes collected per task (store only)")
    parser.add_argument("--x-axis", choices=["simulator", "agent"], default="simulator")
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--jobs", type=int, default=1, help="commands at once")
    parser.add_argument("--cores", nargs="+", type=int, default=None,
                        help="cores to pin jobs to, one job per core (default: all this process may use)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin jobs to cores")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per command")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", nargs="*", default=[], choices=["tdmpc", "dreamer"], metavar="WM",
                        help="world models whose runs pass `finetune --compile` (tdmpc: about 1.5x on the CPU); the "
                             "others pass --no-compile, so that a curve never depends on finetune's default")
    parser.add_argument("--set", nargs="+", metavar="[WM:]KEY=VALUE", dest="settings",
                        help="`finetune --set` for a world model's runs (e.g. dreamer:actor_grad=dynamics); "
                             "named in their run directory")
    parser.add_argument("--plot-only", action="store_true", help="start nothing; plot the runs as far as they got")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    args = parser.parse_args()

    try:
        tasks = [task_name(task) for task in args.tasks]
    except ValueError as error:
        bad_input(str(error))
    for flag in ("eval_every", "eval_episodes", "jobs", "threads", "data_episodes", "num_envs"):
        if getattr(args, flag) <= 0:
            bad_input(f"--{flag.replace('_', '-')} must be positive")
    env_steps = DEFAULT_ENV_STEPS | parse_per_world_model(args.env_steps, args.world_models, int, "--env-steps")
    if any(steps <= 0 for steps in env_steps.values()):
        bad_input("--env-steps must be positive")
    train_ratio = REFERENCE_TRAIN_RATIO | parse_per_world_model(args.train_ratio, args.world_models, float,
                                                                "--train-ratio")
    seed_steps = {wm: None for wm in ALGORITHM} | parse_per_world_model(args.seed_steps, args.world_models, int,
                                                                         "--seed-steps")
    settings = parse_settings(args.settings, args.world_models)
    workdir, out = args.workdir.resolve(), args.out.resolve()
    cores = None
    if not args.no_pin and shutil.which("taskset"):
        cores = args.cores or sorted(os.sched_getaffinity(0))
    elif not args.no_pin:
        print("taskset not found: jobs are not pinned to cores", file=sys.stderr)

    pvr = pvr_pipe()
    jobs: dict[str, Job] = {}
    runs: dict[tuple[str, str, str, int], tuple[Path, Path, Path, list[str], Path]] = {}
    for task in tasks:
        data = workdir / "data" / task
        jobs[f"collect {task}"] = Job(f"collect {task}", [*pvr, "collect", "--env", f"dmc/{task}", "--variant", "train",
                                                          "--episodes", str(args.data_episodes), "--seed", "0",
                                                          "--out", str(data), "--quiet"],
                                      workdir / "logs" / "collect" / f"{task}.log")
        for encoder in args.encoders:
            store = workdir / "stores" / task / f"{encoder}.zarr"
            jobs[f"encode {task} {encoder}"] = Job(
                f"encode {task} {encoder}", [*pvr, "encode", "--model", encoder, "--dataset", str(data), "--out",
                                             str(store), "--device", args.device, "--threads", str(args.threads),
                                             "--quiet"],
                workdir / "logs" / "encode" / task / f"{encoder}.log", deps=[f"collect {task}"])
            for wm in args.world_models:
                name = run_dir_name(wm, args.preset, train_ratio[wm], seed_steps[wm], args.episode_steps, settings[wm])
                for seed in args.seeds:
                    rel = Path(task) / encoder / name / f"seed{seed}"
                    run_dir, log = workdir / "runs" / rel, workdir / "logs" / "runs" / rel.with_suffix(".log")
                    wall_file = log.with_suffix(".json")
                    command = [*pvr, "finetune", "--store", str(store), "--world-model", wm, "--preset", args.preset,
                               "--offline-fraction", "0", "--seed", str(seed), "--env-steps", str(env_steps[wm]),
                               "--eval-every", str(args.eval_every), "--eval-episodes", str(args.eval_episodes),
                               *(["--seed-steps", str(seed_steps[wm])] if seed_steps[wm] is not None else []),
                               "--train-ratio", f"{train_ratio[wm]:g}",
                               "--num-envs", str(args.num_envs),
                               *(["--max-steps", str(args.episode_steps)] if args.episode_steps else []),
                               "--device", args.device, "--threads", str(args.threads), "--quiet",
                               "--compile" if wm in args.compile else "--no-compile",
                               *[arg for key, value in sorted(settings[wm].items()) for arg in ("--set", f"{key}={value}")],
                               "--out", str(run_dir)]
                    record_file = out / "reference_curves_runs" / rel.with_suffix(".json")
                    runs[(task, encoder, wm, seed)] = (run_dir, log, wall_file, command, record_file)
                    key = f"finetune {task} {encoder} {wm} seed{seed}"
                    jobs[key] = Job(key, command, log, deps=[f"encode {task} {encoder}"], run_dir=run_dir,
                                    total=env_steps[wm], wall_file=wall_file, record_file=record_file)

    started = time.monotonic()
    if not args.plot_only:
        for job in jobs.values():
            if job.run_dir is not None:
                saved = checkpoint_progress(job.run_dir)
                if saved and saved["env_steps"] >= job.total:
                    job.status = "skipped"      # finished before: nothing to launch
                elif saved is None and finished_record(job.record_file, job.total):
                    job.status = "skipped"      # finished elsewhere: its record stands for it
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        schedule(list(jobs.values()), args.jobs, cores, args.quiet)
    wall_s = round(time.monotonic() - started, 1)

    published = load_published()
    document = {"benchmark": "reference_curves", "x_axis": f"{args.x_axis}_steps",
                "x_axis_note": "agent steps x action repeat = simulator steps; ratios and targets compare at equal "
                               "simulator steps whatever the axis",
                "preset": args.preset, "encoders": args.encoders, "world_models": args.world_models,
                "seeds": args.seeds, "env_steps": {wm: env_steps[wm] for wm in args.world_models},
                "eval_every": args.eval_every,
                "eval_episodes": args.eval_episodes, "num_envs": args.num_envs, "episode_steps": args.episode_steps,
                "comparable_to_published": args.episode_steps is None,
                "train_ratio": {wm: train_ratio[wm] for wm in args.world_models},
                "seed_steps_given": {wm: seed_steps[wm] for wm in args.world_models},
                "settings": {wm: settings[wm] for wm in args.world_models},
                "target_ratio": TARGET_RATIO, "plot_only": args.plot_only, "wall_s": wall_s,
                "published_csv": {"path": str(PUBLISHED_CSV.relative_to(REPO)),
                                  "sha256": hashlib.sha256(PUBLISHED_CSV.read_bytes()).hexdigest()},
                "workdir": str(workdir), "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                "device": args.device, "threads": args.threads, "tasks": []}
    if args.episode_steps:
        document["note"] = (f"episodes capped at {args.episode_steps} agent steps: returns are not comparable to "
                            f"the published ones (1000 simulator steps an episode)")
    failures = []
    for task in tasks:
        repeat = action_repeat_of(workdir, task)
        groups = []
        for wm in args.world_models:
            for encoder in args.encoders:
                seeds, curves = [], {}
                for seed in args.seeds:
                    run_dir, log, wall_file, command, record_file = runs[(task, encoder, wm, seed)]
                    job = jobs[f"finetune {task} {encoder} {wm} seed{seed}"]
                    summary, curve = summarise_run(run_dir, seed, env_steps[wm], repeat,
                                                   None if args.plot_only else job, wall_file, log, command,
                                                   record_file)
                    seeds.append(summary)
                    if curve:
                        curves[seed] = curve
                obs = observation_of(encoder)
                reference = published.get((ALGORITHM[wm], obs, task))
                ours = aggregate(curves, repeat)
                targets = TARGETS.get((wm, encoder, task), [])
                last, target_rows = compare(ours, last_common_step(curves), reference, targets, repeat)
                recorded = sorted({run["seed_steps"] for run in seeds if run["seed_steps"] is not None})
                group = {"world_model": wm, "encoder": encoder, "observation": obs, "preset": args.preset,
                         "env_steps": env_steps[wm], "simulator_steps": env_steps[wm] * repeat,
                         "train_ratio": train_ratio[wm], "settings": settings[wm],
                         "seed_steps": recorded[0] if len(recorded) == 1 else (recorded or seed_steps[wm]),
                         "action_repeat": repeat,
                         "runs": seeds, "ours": ours, "published": None, "last_point": last, "targets": target_rows}
                if reference:
                    group["published"] = {key: reference[key] for key in ("algorithm", "observation", "source",
                                                                          "method", "seeds", "logged_x_unit")}
                    group["published"]["points"] = reference["points"]
                else:
                    group["published_missing"] = (f"no published {ALGORITHM_NAME[ALGORITHM[wm]]} {obs} curve for "
                                                  f"{task} in {PUBLISHED_CSV.name}")
                groups.append(group)
        png = out / f"reference_curves_{task}.png"
        plot_task(task, groups, args.x_axis, png, args.preset, args.seeds, args.episode_steps)
        entry = {"task": task, "env": f"dmc/{task}", "png": str(png), "curves": groups}
        document["tasks"].append(entry)
        header = {key: value for key, value in document.items() if key != "tasks"}
        (out / f"reference_curves_{task}.json").write_text(json.dumps({**header, "tasks": [entry]}, indent=2) + "\n")
    for job in jobs.values():
        if job.status in ("failed", "blocked"):
            failures.append({"name": job.name, "status": job.status, "rc": job.rc, "command": shlex.join(job.command),
                             "log": str(job.log)})
    document["failures"] = failures
    print(json.dumps(document, indent=2))
    if failures:
        for failure in failures:
            print(f"{failure['status']}: {failure['name']}: {failure['command']}\n  log: {failure['log']}",
                  file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

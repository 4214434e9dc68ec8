"""A longer online fine-tune than the default study's, for a session with a GPU.

The default study (params.yaml) fine-tunes each agent for 50 agent steps so that it fits 2 CPU cores.
This runs the same world-model settings and offline start for longer, on full cartpole-swingup
episodes: a random-policy dataset is collected, encoded by each encoder and a world model trained
on it offline (`pvr-pipe collect/encode/train`), then every encoder x world model is fine-tuned at
once, one `pvr-pipe finetune` process each sharing the device, each stopped after --minutes (its
last evaluation stands; the run resumes from its checkpoint if started again with the same --out).
Prints one JSON document: per agent the random policy's return, the evaluation curve (agent step,
mean return over the evaluation episodes), agent steps/s and where the time went.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent


def pvr_pipe(*args: object) -> list[str]:
    return [sys.executable, "-m", "stages.cli", *map(str, args)]


def settings_flags(settings: dict) -> list[str]:
    return [flag for key, value in settings.items() for flag in ("--set", f"{key}={value}")]


def read_curve(live_dir: Path, name: str) -> list[tuple[int, float]]:
    path = live_dir / "plots" / "metrics" / f"{name}.tsv"
    if not path.exists():
        return []
    with path.open() as rows:
        return [(int(row["step"]), round(float(row[Path(name).name]), 2)) for row in csv.DictReader(rows, delimiter="\t")]


def last_value(live_dir: Path, name: str) -> float | None:
    curve = read_curve(live_dir, name)
    return curve[-1][1] if curve else None


def run_all(commands: dict[str, list[str]], logs: Path, seconds: float | None) -> dict[str, int]:
    """Start every command at once; stop those still running after `seconds` (SIGTERM)."""
    logs.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    running = {name: subprocess.Popen(command, cwd=REPO, env=env, stdout=(logs / f"{name}.log").open("w"),
                                      stderr=subprocess.STDOUT) for name, command in commands.items()}
    deadline = None if seconds is None else time.monotonic() + seconds
    codes = {}
    for name, process in running.items():
        try:
            codes[name] = process.wait(None if deadline is None else max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            process.terminate()
            codes[name] = process.wait()
    return codes


def run_or_exit(commands: dict[str, list[str]], logs: Path) -> None:
    failed = {name: code for name, code in run_all(commands, logs, None).items() if code}
    if failed:
        sys.exit(f"failed: {failed}; logs in {logs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dmc/cartpole-swingup")
    parser.add_argument("--encoders", nargs="+", default=["pixels", "efficientnet-lite0"])
    parser.add_argument("--world-models", nargs="+", default=["dreamer", "tdmpc"])
    parser.add_argument("--episodes", type=int, default=16, help="random-policy episodes collected offline")
    parser.add_argument("--episode-steps", type=int, default=500, help="agent steps per episode (500: the whole)")
    parser.add_argument("--updates", type=int, default=1000, help="offline updates before the fine-tune")
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock limit of each fine-tune")
    parser.add_argument("--eval-every", type=int, default=2500)
    parser.add_argument("--eval-episodes", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="pvr-pipe-longer-"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    dataset, logs = out / "trajectories", out / "logs"
    timings = {}
    started = time.monotonic()
    run_or_exit({"collect": pvr_pipe("collect", "--env", args.env, "--episodes", args.episodes, "--max-steps",
                                     args.episode_steps, "--workers", min(os.cpu_count() or 1, 8), "--out", dataset,
                                     "--quiet")}, logs)
    timings["collect_s"] = round(time.monotonic() - started, 1)
    for encoder in args.encoders:
        started = time.monotonic()
        run_or_exit({f"encode-{encoder}": pvr_pipe("encode", "--model", encoder, "--dataset", dataset,
                                                   "--out", out / f"{encoder}.zarr", "--device", args.device,
                                                   "--quiet")}, logs)
        timings[f"encode_{encoder}_s"] = round(time.monotonic() - started, 1)

    agents = {f"{encoder}-{wm}": (encoder, wm) for encoder in args.encoders for wm in args.world_models}
    started = time.monotonic()
    run_or_exit({f"train-{name}": pvr_pipe("train", "--store", out / f"{encoder}.zarr", "--world-model", wm,
                                           "--preset", params["train"]["preset"],
                                           *settings_flags(params["world_models"][wm]["settings"]),
                                           "--updates", args.updates, "--out", out / "runs" / name,
                                           "--device", args.device, "--threads", args.threads, "--quiet")
                 for name, (encoder, wm) in agents.items()}, logs)
    timings["train_s"] = round(time.monotonic() - started, 1)
    codes = run_all({f"finetune-{name}": pvr_pipe("finetune", "--run", out / "runs" / name, "--env-steps", 10 ** 7,
                                                  "--eval-every", args.eval_every, "--eval-episodes",
                                                  args.eval_episodes, "--device", args.device,
                                                  "--threads", args.threads, "--quiet")
                     for name in agents}, logs, args.minutes * 60)

    results = []
    for name, (encoder, wm) in agents.items():
        finetune_dir = out / "runs" / name / "finetune"
        live = finetune_dir / "live"
        info = yaml.safe_load((finetune_dir / "finetune.yaml").read_text()) if (finetune_dir / "finetune.yaml").exists() else {}
        results.append({"encoder": encoder, "world_model": wm, "exit_code": codes[f"finetune-{name}"],
                        "random_return": round(info.get("random_return", float("nan")), 2),
                        "eval_return_by_agent_step": dict(read_curve(live, "eval/return")),
                        "agent_steps_per_s": last_value(finetune_dir / "timing", "agent_steps_per_s"),
                        **{f"{part}_share": last_value(finetune_dir / "timing", f"{part}_share")
                           for part in ("simulator", "encoder", "agent", "learner", "other")}})
    print(json.dumps({"benchmark": "longer_finetune", "env": args.env, "episode_steps": args.episode_steps,
                      "offline_episodes": args.episodes, "offline_updates": args.updates, "minutes": args.minutes,
                      "device": args.device, "device_name": torch.cuda.get_device_name() if args.device.startswith(
                          "cuda") else platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "torch": torch.__version__, "timings": timings,
                      "world_model_settings": {wm: params["world_models"][wm]["settings"] for wm in args.world_models},
                      "preset": params["train"]["preset"], "results": results}, indent=2))


if __name__ == "__main__":
    main()

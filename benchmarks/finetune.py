"""Online fine-tuning throughput: agent steps/s of `pvr-pipe finetune`, and where its time goes.

For each encoder x world model: a short random-policy dataset is collected and encoded, a world
model trained offline for a few updates, then `finetune` plays `--steps` agent steps (train ratio
as published: dreamer 0.5, tdmpc 1 update per step). Its own timer splits the playing time
(evaluation excluded) into simulator (env step + render), encoder (the frozen PVR on each new
frame), agent (acting: dreamer's filter + actor, tdmpc's MPPI planning), learner (gradient
updates) and other (bookkeeping). Next to it: the bare env rate (step + render), the ceiling of
the loop. PVR weights: random tensors of the real architecture through the registry's loading
path (none can be downloaded here; speed does not depend on their values).

`--modes eager compiled`: also through torch.compile (tdmpc: inductor on the CPU, CUDA graphs on
a GPU; dreamer: its RSSM steps, inductor); a first run compiles (`first_run_s`), a second run of
the same length in the same process is the one timed.

`--seeds K` (tdmpc) also fine-tunes K seeds, each from its own offline run, as one batched model
(`finetune --seed 0 ... --seed K-1`) and then each seed alone, one after another in the same
process: `seeds_K_speedup` = (playing seconds of the K lone runs) / (playing seconds of the
batched run), the aggregate agent steps/s gained. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from pipeline.config import CollectConfig, EncodeConfig, FinetuneConfig, TrainConfig
from pipeline.envs import make_env
from pipeline.storage.checkpoint import load_checkpoint
from pipeline.storage.live_metrics import read_summary
from pipeline.storage.runs import AGENT_CHECKPOINT, TIMING_DIR
from random_weights import write_random_weights
from stages import collect, encode, finetune, train


def bare_env_rate(env_id: str, frame_size: int, steps: int) -> float:
    env = make_env(env_id, frame_size=frame_size)
    env.reset(seed=0)
    env.action_space.seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(env.action_space.sample())
    return steps / (time.perf_counter() - start)


def timed_finetune(run_dir: Path, mode: str, args, root: Path) -> dict:
    """One finetune run's agent steps/s and time shares. Compiled: a first run of the same length
    compiles (its seconds are `first_run_s`), then a second one in the same process is timed."""
    options = dict(run=run_dir, env_steps=args.steps, eval_every=10 ** 9, eval_episodes=1, num_envs=args.num_envs,
                   device=args.device, compile=mode == "compiled")
    row = {}
    if mode == "compiled":
        out, = finetune.run(FinetuneConfig(**options, out=root / "compiling"), show_progress=False)
        row["first_run_s"] = round(read_summary(out / TIMING_DIR)["seconds"]["round"], 2)
    out, = finetune.run(FinetuneConfig(**options, out=root / mode), show_progress=False)
    progress = load_checkpoint(out / AGENT_CHECKPOINT)["progress"]
    seconds = read_summary(out / TIMING_DIR)["seconds"]
    return row | {"agent_steps": progress["env_steps"], "updates": progress["updates"],
                  "agent_steps_per_s": round(progress["env_steps"] / seconds["round"], 2),
                  **{f"{part}_share": round(share, 3) for part, share in finetune.time_shares(seconds).items()}}


def batched_seeds(store: str, args, root: Path) -> dict:
    """K seeds fine-tuned as one batched tdmpc model, and each alone: playing seconds and speed-up."""
    seeds = list(range(args.seeds))
    train.run(TrainConfig(store=store, world_model="tdmpc", preset=args.preset, updates=10, seed=seeds,
                          out=root / "offline" / "seed{seed}", device=args.device), show_progress=False)
    options = dict(world_model="tdmpc", env_steps=args.steps, eval_every=10 ** 9, eval_episodes=1,
                   num_envs=args.num_envs, device=args.device)
    together = finetune.run(FinetuneConfig(run=root / "offline" / "seed{seed}", seed=seeds,
                                           out=root / "together" / "seed{seed}", **options), show_progress=False)
    batched_s = read_summary(together[0] / TIMING_DIR)["seconds"]["round"]
    alone_s = 0.0
    for seed in seeds:
        out, = finetune.run(FinetuneConfig(run=root / "offline" / f"seed{seed}", seed=seed,
                                           out=root / "alone" / f"seed{seed}", **options), show_progress=False)
        alone_s += read_summary(out / TIMING_DIR)["seconds"]["round"]
    k = args.seeds
    return {f"seeds_{k}_batched_s": round(batched_s, 2), f"seeds_{k}_alone_s": round(alone_s, 2),
            f"seeds_{k}_agent_steps_per_s": round(k * args.steps / batched_s, 2),
            f"seeds_{k}_speedup": round(alone_s / batched_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dmc/cartpole-swingup")
    parser.add_argument("--encoders", nargs="+", default=["pixels", "efficientnet-lite0", "dinov2"])
    parser.add_argument("--world-models", nargs="+", default=["dreamer", "tdmpc"])
    parser.add_argument("--preset", default="xs")
    parser.add_argument("--steps", type=int, default=200, help="agent steps online")
    parser.add_argument("--episode-steps", type=int, default=100)
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=1, help="tdmpc: also K seeds batched against each alone")
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compiled"],
                        help="compiled: through torch.compile (tdmpc: CUDA graphs on a GPU)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pvr-pipe-bench-"))
    os.environ["PVR_PIPE_WEIGHTS"] = str(tmp / "weights")
    (tmp / "weights").mkdir()
    dataset = tmp / "trajectories"
    collect.run(CollectConfig(env=args.env, episodes=4, max_steps=args.episode_steps, out=dataset),
                show_progress=False)
    bare = bare_env_rate(args.env, 64, args.steps)
    results = []
    for encoder in args.encoders:
        if encoder == "dinov2":
            write_random_weights(encoder, tmp / "weights")
        store = encode.run(EncodeConfig(model=encoder, dataset=str(dataset), out=str(tmp / f"{encoder}.zarr"),
                                        device=args.device), show_progress=False)
        for world_model in args.world_models:
            settings = {"sequence_length": 32} if world_model == "dreamer" else {}
            run_dir = train.run(TrainConfig(store=store, world_model=world_model, preset=args.preset, settings=settings,
                                            updates=10, out=tmp / "runs" / encoder / world_model, device=args.device),
                                show_progress=False)[0]
            for mode in args.modes:
                results.append({"encoder": encoder, "world_model": world_model, "preset": args.preset,
                                "compiled": mode == "compiled", "bare_env_steps_per_s": round(bare, 1),
                                **timed_finetune(run_dir, mode, args, tmp / "finetune" / encoder / world_model)})
            if world_model == "tdmpc" and args.seeds > 1:
                results[-1] |= batched_seeds(store, args, tmp / "seeds" / encoder)
    print(json.dumps({"benchmark": "finetune", "env": args.env, "num_envs": args.num_envs, "device": args.device,
                      "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()

"""Encode throughput: the whole `pvr-pipe encode` vs the bare model forward, side by side.

ratio = frames/s of `stages.encode.run` (read shards, decode PNG, resize + normalise, forward,
write Zarr) / frames/s of the model's forward alone on preprocessed in-memory tensors, same
model, batch size, precision, threads and device. The model is loaded once before timing (its
load time is reported separately). Weights: random tensors of the real architecture, written
to a temporary weights directory and loaded through the registry's real loading path (no
pretrained weights can be downloaded here; throughput does not depend on their values).
`loaders` is the number of loader processes the default settings give on this device (none on
the CPU); `--loaders N ...` also times encode with N loader processes decoding shards, as
`loaders_N_ratio`. Also: 2 Dask workers x 1 thread vs 1 process x 2 threads (an existing,
warmed-up local cluster passed as `scheduler`). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import CollectConfig, EncodeConfig
from pipeline.encoders import FrozenEncoder, get_spec
from random_weights import write_random_weights
from stages import collect, encode


def bare_forward_rate(encoder: FrozenEncoder, frames: torch.Tensor, batch_size: int) -> float:
    batches = [encoder.preprocess(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)]
    encoder.forward(batches[0])  # warm-up
    start = time.perf_counter()
    for x in batches:
        encoder.forward(x)
    return len(frames) / (time.perf_counter() - start)


def encode_rate(cfg: EncodeConfig, frames: int) -> float:
    start = time.perf_counter()
    encode.run(cfg, show_progress=False)
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["r3m-rn18", "dinov2"])
    parser.add_argument("--env", default="dmc/cartpole-swingup")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=47, help="agent steps per episode")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-dask", action="store_true")
    parser.add_argument("--loaders", nargs="*", type=int, default=[],
                        help="also time encode with these numbers of loader processes")
    parser.add_argument("--collect-workers", type=int, default=1, help="env processes collecting the dataset")
    args = parser.parse_args()
    threads = torch.get_num_threads()

    tmp = Path(tempfile.mkdtemp(prefix="pvr-pipe-bench-"))
    os.environ["PVR_PIPE_WEIGHTS"] = str(tmp / "weights")
    (tmp / "weights").mkdir()
    dataset = tmp / "trajectories"
    collect.run(CollectConfig(env=args.env, episodes=args.episodes, max_steps=args.steps, episodes_per_shard=1,
                              out=dataset, workers=args.collect_workers), show_progress=False)
    from pipeline.storage.trajectory_reader import iter_episodes

    frames = torch.from_numpy(np.concatenate([e.frames for e in iter_episodes(dataset)]))
    print(f"collected {len(frames)} frames", file=sys.stderr, flush=True)
    results = []
    for name in args.models:
        write_random_weights(name, tmp / "weights")
        options = dict(model=name, dataset=str(dataset), batch_size=args.batch_size, precision=args.precision,
                       device=args.device, threads=threads)
        load_start = time.perf_counter()
        encoder = encode._encoder_for(EncodeConfig(**options))
        load_s = time.perf_counter() - load_start
        rates = {"bare": [], "encode": []}
        for repeat in range(args.repeats):
            rates["bare"].append(bare_forward_rate(encoder, frames, args.batch_size))
            rates["encode"].append(encode_rate(EncodeConfig(**options, out=str(tmp / f"{name}-{repeat}.zarr")),
                                               len(frames)))
        for loaders in args.loaders:
            rates[f"loaders_{loaders}"] = [
                encode_rate(EncodeConfig(**options, loaders=loaders, out=str(tmp / f"{name}-l{loaders}-{repeat}.zarr")),
                            len(frames)) for repeat in range(args.repeats)]
        median = {k: statistics.median(v) for k, v in rates.items()}
        print(json.dumps({"model": name, **median}), file=sys.stderr, flush=True)   # progress
        result = {"model": name, "architecture": get_spec(name).architecture, "frames": len(frames),
                  "frame_size": int(frames.shape[1]), "resolution": get_spec(name).resolution,
                  "batch_size": args.batch_size, "precision": "bf16-autocast" if encoder.bf16 else "fp32",
                  "device": args.device, "threads": threads, "repeats": args.repeats,
                  "model_load_s": round(load_s, 2), "bare_forward_frames_per_s": round(median["bare"], 1),
                  "encode_frames_per_s": round(median["encode"], 1),
                  "loaders": encode.encode_loaders(EncodeConfig(**options)),
                  "ratio": round(median["encode"] / median["bare"], 3), "target_ratio": 0.90}
        for loaders in args.loaders:
            result[f"loaders_{loaders}_encode_frames_per_s"] = round(median[f"loaders_{loaders}"], 1)
            result[f"loaders_{loaders}_ratio"] = round(median[f"loaders_{loaders}"] / median["bare"], 3)
        if not args.no_dask:
            result.update(dask_comparison(options, tmp, name, len(frames), args.repeats))
        results.append(result)
    print(json.dumps({"benchmark": "encode", "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                      "torch": torch.__version__, "results": results}, indent=2))


def dask_comparison(options: dict, tmp: Path, name: str, frames: int, repeats: int) -> dict:
    """2 worker processes x 1 thread (warm cluster) vs 1 process x 2 threads, same units.

    The in-process runs go first, with no cluster alive: idle Dask processes still take CPU.
    """
    from pipeline.parallel import dask_client

    process_rates = [encode_rate(EncodeConfig(**dict(options, threads=2), out=str(tmp / f"{name}-p-{repeat}.zarr")),
                                 frames) for repeat in range(repeats)]
    with dask_client(workers=2, scheduler=None) as client:
        on_dask = dict(options, threads=1, scheduler=client.scheduler.address)
        encode.run(EncodeConfig(**on_dask, out=str(tmp / f"{name}-dask-warmup.zarr")), show_progress=False)
        dask_rates = [encode_rate(EncodeConfig(**on_dask, out=str(tmp / f"{name}-dask-{repeat}.zarr")), frames)
                      for repeat in range(repeats)]
    dask_rate, process_rate = statistics.median(dask_rates), statistics.median(process_rates)
    return {"dask_2x1_frames_per_s": round(dask_rate, 1), "process_1x2_frames_per_s": round(process_rate, 1),
            "dask_ratio": round(dask_rate / process_rate, 3), "target_dask_ratio": 0.90}


if __name__ == "__main__":
    main()

"""What caching embeddings buys: world-model updates/s from the cache vs encoding on the fly.

Both sides train the same world model (same preset, batch and sequence length) on the same
sampled windows, in one process:
  cached:  batches gathered from the store's arrays in memory (what `pvr-pipe train` does);
  on the fly: batches of raw frames, each frame of the batch pushed through the same frozen PVR
    (preprocess + forward) before the update: the design of the paper's own code. Frames that
    occur in several windows of a batch are encoded once, so this is a lower bound on its cost.
payoff = cached updates/s / on-the-fly updates/s. loader_share = time spent sampling and
gathering batches / total update time on the cached side. Weights: random tensors of the real
architecture through the registry's loading path (none can be downloaded here; speed does not
depend on their values). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import CollectConfig, EncodeConfig
from pipeline.storage.embedding_store import read_store
from pipeline.storage.trajectory_reader import iter_episodes
from random_weights import write_random_weights
from stages import collect, encode
from world_models.registry import make_world_model, world_model_config
from world_models.replay import Replay


def cached_rate(model, optimizers, replay: Replay, cfg, updates: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    model.train_step(replay.sample(cfg.batch_size, cfg.sequence_length, rng, cfg.frame_stack), optimizers)  # warm-up
    loading = 0.0
    start = time.perf_counter()
    for _ in range(updates):
        load_start = time.perf_counter()
        batch = replay.sample(cfg.batch_size, cfg.sequence_length, rng, cfg.frame_stack)
        loading += time.perf_counter() - load_start
        model.train_step(batch, optimizers)
    total = time.perf_counter() - start
    return updates / total, loading / total


def on_the_fly_rate(model, optimizers, frames: np.ndarray, index_replay: Replay, encoder, cfg, updates: int,
                    seed: int, encode_batch: int) -> tuple[float, int]:
    rng = np.random.default_rng(seed)
    start, encoded = time.perf_counter(), 0
    for _ in range(updates):
        batch = index_replay.sample(cfg.batch_size, cfg.sequence_length, rng, cfg.frame_stack)
        index = batch["obs"].long().squeeze(-1)
        unique, inverse = torch.unique(index, return_inverse=True)
        embeddings = torch.cat([encoder(frames[unique[i:i + encode_batch].numpy()]).float()
                                for i in range(0, len(unique), encode_batch)])
        batch["obs"] = embeddings[inverse]
        model.train_step(batch, optimizers)
        encoded += len(unique)
    return updates / (time.perf_counter() - start), encoded // updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dinov2")
    parser.add_argument("--world-models", nargs="+", default=["dreamer", "tdmpc"])
    parser.add_argument("--preset", default="s")
    parser.add_argument("--env", default="dmc/cartpole-swingup")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=250, help="agent steps per episode")
    parser.add_argument("--cached-updates", type=int, default=30)
    parser.add_argument("--fly-updates", type=int, default=1)
    parser.add_argument("--encode-batch", type=int, default=64)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pvr-pipe-bench-"))
    os.environ["PVR_PIPE_WEIGHTS"] = str(tmp / "weights")
    (tmp / "weights").mkdir()
    write_random_weights(args.model, tmp / "weights")
    dataset = tmp / "trajectories"
    collect.run(CollectConfig(env=args.env, episodes=args.episodes, max_steps=args.steps, out=dataset),
                show_progress=False)
    encode_cfg = EncodeConfig(model=args.model, dataset=str(dataset), out=str(tmp / "store.zarr"))
    encode.run(encode_cfg, show_progress=False)
    encoder = encode._encoder_for(encode_cfg)
    arrays, episode_start, attrs = read_store(str(tmp / "store.zarr"))
    cached = Replay(arrays, episode_start, "embedding")
    frames = np.concatenate([episode.frames for episode in iter_episodes(dataset)])
    index_replay = Replay({**arrays, "frame_index": np.arange(len(frames), dtype=np.float32)[:, None]},
                          episode_start, "frame_index")

    results = []
    for name in args.world_models:
        cfg = world_model_config(name, args.preset, {})
        rates = {}
        for side in ("cached", "on_the_fly"):
            torch.manual_seed(0)
            model = make_world_model(name, cfg, "embedding", arrays["embedding"].shape[1:], cached.action_dim).train()
            optimizers = model.make_optimizers()
            if side == "cached":
                rates["cached"], loader_share = cached_rate(model, optimizers, cached, cfg, args.cached_updates, 0)
            else:
                rates["fly"], frames_per_update = on_the_fly_rate(model, optimizers, frames, index_replay, encoder, cfg,
                                                                  args.fly_updates, 0, args.encode_batch)
        results.append({"world_model": name, "preset": args.preset, "batch_size": cfg.batch_size,
                        "sequence_length": cfg.sequence_length, "frame_stack": cfg.frame_stack,
                        "cached_updates_per_s": round(rates["cached"], 3),
                        "on_the_fly_updates_per_s": round(rates["fly"], 5),
                        "frames_encoded_per_on_the_fly_update": frames_per_update,
                        "payoff": round(rates["cached"] / rates["fly"], 1), "target_payoff": 50,
                        "loader_share": round(loader_share, 4), "target_loader_share": 0.05})
    print(json.dumps({"benchmark": "cache_payoff", "encoder": args.model, "architecture": attrs["timm_architecture"],
                      "precision": attrs["compute_precision"], "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "dataset_frames": len(frames),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()

"""How well a trained world model predicts, on the episodes of a replay.

prediction_error_curve: the per-step error over an open-loop horizon (after `context` observed
  frames the model predicts from actions alone; dreamer: symmetric KL between the open-loop prior
  and the posterior that saw the frames; tdmpc: MSE between rolled-out and encoded latents), next
  to a baseline that copies the last observed latent.
reward_and_reconstruction: reward prediction from the filtered state (dreamer) or the encoded
  latent (tdmpc), as MAE and Pearson correlation; dreamer's reconstruction error.
`evaluate-model` scores held-out and OOD stores with them, `evaluate` the episodes an agent played.
"""

from __future__ import annotations

import numpy as np
import torch

from world_models.replay import Replay

DEFAULT_HORIZON = {"dreamer": 500, "tdmpc": 33}
METRIC_NAME = {"dreamer": "symmetric_kl", "tdmpc": "latent_mse"}
WINDOW_BATCH = 32


def prediction_error_curve(model, replay: Replay, context: int, horizon: int, device: str) -> dict[str, np.ndarray]:
    """Mean over windows of the per-step open-loop error; windows tile each episode."""
    length = context + horizon
    starts = torch.from_numpy(replay.window_starts(length, stride=horizon))
    sums = {"model": np.zeros(horizon), "copy_last": np.zeros(horizon)}
    for chunk in starts.split(WINDOW_BATCH):
        batch = replay.gather(chunk, length, model.cfg.frame_stack)
        result = model.open_loop({k: v.to(device) for k, v in batch.items()}, context)
        for key in sums:
            sums[key] += result[key].cpu().numpy() * len(chunk)
    return {key: value / len(starts) for key, value in sums.items()}


def reward_and_reconstruction(model, replay: Replay, device: str) -> dict:
    """One whole episode at a time; frame 0 carries no reward (RLDS) and is left out."""
    predicted, actual, reconstruction = [], [], []
    for start, end in zip(replay.episode_start, replay.episode_end):
        batch = replay.gather(torch.tensor([start]), int(end - start), model.cfg.frame_stack)
        result = model.one_step_predictions({k: v.to(device) for k, v in batch.items()})
        predicted.append(result["reward"][0, 1:].cpu().numpy())
        actual.append(batch["reward"][0, 1:].numpy())
        if "reconstruction" in result:
            reconstruction.append(result["reconstruction"][0].cpu().numpy())
    predicted, actual = np.concatenate(predicted), np.concatenate(actual)
    varies = predicted.std() > 1e-8 and actual.std() > 1e-8
    return {"reward": {"mae": float(np.abs(predicted - actual).mean()),
                       "correlation": float(np.corrcoef(predicted, actual)[0, 1]) if varies else 0.0},
            "reconstruction_mse": float(np.concatenate(reconstruction).mean()) if reconstruction else None}

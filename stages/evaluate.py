"""`pvr-pipe evaluate`: an agent's returns on the training look and on OOD looks.

Plays `episodes` episodes per look without exploration, in envs that differ only in how they
look: every look gets the same episode seeds, so the same start states, and a random policy on
those seeds gives the floor. Per look: returns (mean, std, per episode), the OOD score (mean
return on the look / on the training look, as the paper normalises OOD performance) and the
same above the random floor; and the world model's errors on the episodes just played, encoded
by the same frozen PVR (open-loop prediction error with its copy-last baseline, reward MAE and
correlation), which say how much of a drop comes from the model. The first frame of each look
is saved (`frames/<look>.png`), so what was played can be seen. Writes `<out>/metrics.json`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline import __version__
from pipeline.analysis.model_quality import (DEFAULT_HORIZON, METRIC_NAME, prediction_error_curve,
                                             reward_and_reconstruction)
from pipeline.config import EvaluateConfig
from pipeline.encoders.store_encoder import StoreEncoder
from pipeline.envs import get_entry
from pipeline.envs.store_env import env_settings, make_pool
from pipeline.errors import UserError
from pipeline.rollout import PlayedEpisode, evaluate_agent, random_returns
from pipeline.storage.atomic_files import write_json_atomic
from pipeline.storage.runs import EVALUATION_DIR, EVALUATION_FRAMES, agent_seed, load_agent
from pipeline.storage.writer_lock import writer_lock
from world_models.replay import Replay

METRICS_FILE = "metrics.json"
EVAL_SEED_STREAM = 2


def run(cfg: EvaluateConfig) -> Path:
    if cfg.run is None:
        raise UserError("no run; pass --run DIR (a fine-tuned agent, or an offline tdmpc run)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    agent, attrs, name = load_agent(cfg.run, cfg.device)
    settings = env_settings(attrs)
    entry = get_entry(settings["env"])
    variants = cfg.variants or list(entry.variants)
    unknown = [v for v in variants if v not in entry.variants]
    if unknown:
        raise UserError(f"unknown look {unknown} for {settings['env']}; its looks: {', '.join(entry.variants)}")
    train_variant = settings["variant"]
    variants = [train_variant] + [v for v in variants if v != train_variant]
    encoder = StoreEncoder(attrs, cfg.weights, cfg.device)
    max_steps = cfg.max_steps or settings["max_steps"]
    seeds = [int(s) for s in np.random.SeedSequence(cfg.seed, spawn_key=(EVAL_SEED_STREAM,)).generate_state(cfg.episodes)]
    out = cfg.out or cfg.run / EVALUATION_DIR
    with writer_lock(out, "evaluate"):
        (out / EVALUATION_FRAMES).mkdir(parents=True, exist_ok=True)

        world_model = agent.world_model.eval()
        kind = type(world_model).__name__.removesuffix("WorldModel").lower()
        random = random_returns(settings, train_variant, seeds, max_steps)
        metrics = {"about": {"run": str(cfg.run), "agent": name, "agent_seed": agent_seed(cfg.run),
                             "encoder": attrs["encoder"], "env": settings["env"],
                             "train_variant": train_variant, "world_model": kind, "episodes": cfg.episodes,
                             "max_steps": max_steps, "seed": cfg.seed, "encoder_properties": attrs["properties"],
                             "prediction_metric": METRIC_NAME[kind], "pipeline_version": __version__},
                   "random": {"return_mean": float(np.mean(random)), "returns": random}}
        for variant in variants:
            with make_pool(settings, variant, cfg.num_envs, step_frames=encoder.reads == "image") as pool:
                played, = evaluate_agent(agent, pool, encoder, [seeds], max_steps, cfg.device, (cfg.seed,))
            Image.fromarray(played[0].first_frame).save(out / EVALUATION_FRAMES / f"{variant}.png")
            returns = [episode.total_return for episode in played]
            metrics[variant] = {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
                                "returns": returns, "model": _model_errors(world_model, played, encoder.feature,
                                                                           cfg, kind)}
        train_return, floor = metrics[train_variant]["return_mean"], metrics["random"]["return_mean"]
        for variant in variants:
            mean = metrics[variant]["return_mean"]
            metrics[variant]["ood_score"] = mean / train_return if train_return else None
            metrics[variant]["ood_score_above_random"] = (mean - floor) / (train_return - floor) if train_return != floor else None
        write_json_atomic(out / METRICS_FILE, metrics)
        return out


def _model_errors(world_model, played: list[PlayedEpisode], feature: str, cfg: EvaluateConfig, kind: str) -> dict:
    """The world model's prediction and reward errors on the episodes just played."""
    arrays = {name: np.concatenate([e.arrays[name] for e in played]) for name in played[0].arrays}
    lengths = [len(e.arrays["reward"]) for e in played]
    replay = Replay(arrays, np.concatenate([[0], np.cumsum(lengths)[:-1]]), feature)
    context = cfg.context if kind == "dreamer" else 1
    horizon = min(cfg.horizon or DEFAULT_HORIZON[kind], min(lengths) - context)
    if horizon < 1:
        return {"prediction_error": None, "reward": None}
    torch.manual_seed(cfg.seed)
    curve = prediction_error_curve(world_model, replay, context, horizon, cfg.device)
    rewards = reward_and_reconstruction(world_model, replay, cfg.device)
    return {"horizon": horizon,
            "prediction_error": {"mean": float(curve["model"].mean()),
                                 "copy_last_mean": float(curve["copy_last"].mean())},
            "reward": rewards["reward"]}

"""A picture of an env's looks: the first frame of the same episode in `train` and each OOD look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.envs.registry import get_entry, make_env

LABEL_HEIGHT = 14


def write_look_grid(env_ids: list[str], seeds: list[int], out: Path, frame_size: int = 96) -> Path:
    """One row per env, one column per look (labelled), each row from its episode seed."""
    rows = []
    for env_id, seed in zip(env_ids, seeds):
        looks = get_entry(env_id).variants
        frames = []
        for look in looks:
            env = make_env(env_id, look, frame_size=frame_size)
            frames.append(env.reset(seed=seed)[0]["image"])
            env.close()
        rows.append((env_id, looks, frames))
    columns = max(len(looks) for _, looks, _ in rows)
    canvas = Image.new("RGB", (columns * frame_size, len(rows) * (frame_size + 2 * LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (env_id, looks, frames) in enumerate(rows):
        top = r * (frame_size + 2 * LABEL_HEIGHT)
        draw.text((2, top), env_id, fill="black")
        for c, (look, frame) in enumerate(zip(looks, frames)):
            canvas.paste(Image.fromarray(np.asarray(frame)), (c * frame_size, top + LABEL_HEIGHT))
            draw.text((c * frame_size + 2, top + LABEL_HEIGHT + frame_size), look, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out

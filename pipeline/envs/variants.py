"""Named visual variants: `train` plus out-of-distribution (OOD) changes of how a scene looks.

A variant is fixed by its name and a variant seed: the same pair always gives the same look,
whatever episode seed is used. Each suite says which variants it supports and applies them.
"""

from __future__ import annotations

import zlib

import numpy as np

TRAIN = "train"

DESCRIPTIONS = {
    TRAIN: "the training distribution, unchanged",
    "agent_color": "agent (robot/body) colours replaced",
    "floor_color": "floor/background colour replaced",
    "lighting": "light colour and intensity changed",
    "camera": "camera field of view and position shifted",
    "texture": "skybox and floor textures replaced by random patterns",
    "wall_texture": "wall textures swapped for other texture families of the suite",
    "floor_texture": "floor and ceiling textures swapped for other texture families of the suite",
    "sky_color": "sky colour replaced",
    "object_color": "object colours swapped for other colours of the suite",
    "table_color": "table colour replaced (its texture removed)",
}


def variant_rng(name: str, seed: int) -> np.random.Generator:
    """The random generator that fixes a variant's look; stable across processes and runs."""
    return np.random.default_rng([zlib.crc32(name.encode()), seed])


def random_colors(rng: np.random.Generator, n: int, low: float = 0.1, high: float = 1.0) -> np.ndarray:
    """`n` RGB colours in [low, high]."""
    return rng.uniform(low, high, size=(n, 3))

"""Each seed's own random numbers, for models that train several seeds at once.

A seed's draws come from its own `torch.Generator`, seeded from the seed alone, so they do not
depend on how many other seeds share the model or in which order. The draws are made eagerly,
before a compiled update or planning call, and handed to it as tensors (a compiled graph cannot
take a generator). Each draw returns (seeds, *shape).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Keep the noise streams apart from the stream that initialises the weights.
NOISE_STREAM, FORKED_STREAM = 0x5EED, 0xE7A1


class SeedNoise:
    def __init__(self, seeds: tuple[int, ...]):
        self.seeds = tuple(int(seed) for seed in seeds)
        self.init_generators = [torch.Generator().manual_seed(seed) for seed in self.seeds]
        self.generators = [torch.Generator().manual_seed(seed * 2 ** 16 + NOISE_STREAM) for seed in self.seeds]

    def normal(self, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators]).to(device)

    def uniform(self, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        return torch.stack([torch.rand(shape, generator=g) for g in self.generators]).to(device)

    def integers(self, high: int, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        return torch.stack([torch.randint(0, high, shape, generator=g) for g in self.generators]).to(device)

    def pairs(self, count: int, device: torch.device | str, draws: int | None = None) -> torch.Tensor:
        """Two distinct indices below `count` per seed, (seeds, 2); or `draws` such pairs, (seeds, draws, 2)."""
        def pair(g):
            return torch.randperm(count, generator=g)[:2]
        if draws is None:
            return torch.stack([pair(g) for g in self.generators]).to(device)
        return torch.stack([torch.stack([pair(g) for _ in range(draws)]) for g in self.generators]).to(device)

    def dropout_mask(self, rate: float, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        """Inverted dropout's mask: 0 with probability `rate`, else 1 / (1 - rate)."""
        return (self.uniform(shape, device) >= rate).float() / (1.0 - rate)

    @contextmanager
    def forked(self, seeds: tuple[int, ...]) -> Iterator[None]:
        """Draw from fresh generators of `seeds` (one per seed of the model) inside the block, and
        afterwards go on where the model's own streams stopped: what happens inside (evaluation)
        never changes what comes after (training)."""
        if len(seeds) != len(self.generators):
            raise ValueError(f"{len(seeds)} seeds to fork for a model of {len(self.generators)}")
        own = self.generators
        self.generators = [torch.Generator().manual_seed(int(seed) * 2 ** 16 + FORKED_STREAM) for seed in seeds]
        try:
            yield
        finally:
            self.generators = own

    def state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def load_state(self, states: list[torch.Tensor]) -> None:
        if len(states) != len(self.generators):
            raise ValueError(f"{len(states)} generator states for {len(self.generators)} seeds")
        for g, state in zip(self.generators, states):
            g.set_state(state.to(torch.uint8).contiguous())

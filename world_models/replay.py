"""Episodes held in memory, sampled as fixed-length windows that never cross an episode boundary.

Zarr is the on-disk cache; training reads it once into memory because thousands of random
sequence reads per second from chunked storage would dominate the update time. Arrays follow
the RLDS convention of the trajectory store: `action[t]` is taken at frame t, `reward[t]` is
received on arriving at frame t.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import UserError


class Replay:
    def __init__(self, arrays: dict[str, np.ndarray], episode_start: np.ndarray, feature: str):
        obs = arrays[feature]
        self.feature = feature
        # Embeddings are stored as float16; convert once rather than per batch.
        self.obs = torch.from_numpy(obs if obs.dtype == np.uint8 else obs.astype(np.float32))
        self.action = torch.from_numpy(arrays["action"].astype(np.float32))
        self.reward = torch.from_numpy(arrays["reward"].astype(np.float32))
        self.is_first = torch.from_numpy(arrays["is_first"].astype(bool))
        self.is_terminal = torch.from_numpy(arrays["is_terminal"].astype(bool))
        self.state = arrays["state"].astype(np.float32)
        self.episode_start = np.asarray(episode_start, dtype=np.int64)
        self.episode_end = np.append(self.episode_start[1:], len(obs))
        lengths = self.episode_end - self.episode_start
        self.first_index = torch.from_numpy(np.repeat(self.episode_start, lengths))

    @property
    def frames(self) -> int:
        return len(self.obs)

    @property
    def episodes(self) -> int:
        return len(self.episode_start)

    @property
    def action_dim(self) -> int:
        return self.action.shape[1]

    def select_episodes(self, episode_ids: list[int]) -> "Replay":
        """A replay holding only the given episodes (in that order)."""
        spans = [np.arange(self.episode_start[e], self.episode_end[e]) for e in episode_ids]
        index = np.concatenate(spans)
        lengths = np.array([len(s) for s in spans])
        arrays = {self.feature: self.obs.numpy()[index], "action": self.action.numpy()[index],
                  "reward": self.reward.numpy()[index], "is_first": self.is_first.numpy()[index],
                  "is_terminal": self.is_terminal.numpy()[index], "state": self.state[index]}
        return Replay(arrays, np.concatenate([[0], np.cumsum(lengths)[:-1]]), self.feature)

    def window_starts(self, length: int, stride: int = 1) -> np.ndarray:
        """First frame of every window of `length` frames lying inside one episode."""
        starts = [np.arange(s, e - length + 1, stride) for s, e in zip(self.episode_start, self.episode_end)]
        starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        if len(starts) == 0:
            longest = int((self.episode_end - self.episode_start).max(initial=0))
            raise UserError(f"no episode has {length} frames (longest: {longest}); use a shorter sequence "
                            f"length or collect longer episodes")
        return starts

    def sample(self, batch: int, length: int, rng: np.random.Generator, stack: int = 1) -> dict[str, torch.Tensor]:
        """`batch` windows of `length` frames, uniformly over all windows inside episodes."""
        starts = self.window_starts(length)
        return self.gather(torch.from_numpy(starts[rng.integers(len(starts), size=batch)]), length, stack)

    def gather(self, starts: torch.Tensor, length: int, stack: int = 1) -> dict[str, torch.Tensor]:
        """Windows from the given first frames. With `stack` > 1, `obs[b, t]` holds the last
        `stack` frames up to t (oldest first), repeating the episode's first frame before it."""
        index = starts[:, None] + torch.arange(length)
        first = self.first_index[index]
        previous = (index - 1).clamp(min=0)
        has_previous = (index > first).unsqueeze(-1)
        if stack == 1:
            obs = self.obs[index]
        else:
            offsets = torch.arange(stack - 1, -1, -1)
            obs = self.obs[torch.maximum(index.unsqueeze(-1) - offsets, first.unsqueeze(-1))]
        return {"obs": obs, "action": self.action[index],
                "prev_action": torch.where(has_previous, self.action[previous], 0.0),
                "reward": self.reward[index], "is_first": self.is_first[index],
                "is_terminal": self.is_terminal[index]}


def split_episodes(episodes: int, validation_fraction: float, split_seed: int = 0) -> tuple[list[int], list[int]]:
    """Training and held-out episode ids: a fixed shuffle (not the training seed, so every seed of
    a study is scored on the same episodes); at least one episode on each side."""
    if episodes < 2:
        raise UserError(f"the store has {episodes} episode(s); hold-out validation needs at least 2")
    order = np.random.default_rng(split_seed).permutation(episodes)
    held_out = min(max(1, round(episodes * validation_fraction)), episodes - 1)
    return sorted(order[held_out:].tolist()), sorted(order[:held_out].tolist())

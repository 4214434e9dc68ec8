"""Episodes held in memory, sampled as fixed-length windows that never cross an episode boundary.

Zarr is the on-disk cache; training reads it once into memory because thousands of random
sequence reads per second from chunked storage would dominate the update time. Arrays follow
the RLDS convention of the trajectory store: `action[t]` is taken at frame t, `reward[t]` is
received on arriving at frame t. Online fine-tuning appends whole episodes as they end; storage
grows by doubling, so appending stays cheap for long runs.
"""

from __future__ import annotations

import numpy as np
import torch

from world_models.errors import WorldModelError

STEP_DTYPES = {"action": np.float32, "reward": np.float32, "is_first": bool, "is_terminal": bool,
               "state": np.float32}
STEP_FIELDS = tuple(STEP_DTYPES)


class Replay:
    def __init__(self, arrays: dict[str, np.ndarray], episode_start: np.ndarray, feature: str):
        self.feature = feature
        self._size = len(arrays[feature])
        self._data = {"obs": _as_tensor(arrays[feature]),
                      **{name: _as_tensor(arrays[name], STEP_DTYPES[name]) for name in STEP_FIELDS}}
        self.episode_start = np.asarray(episode_start, dtype=np.int64)
        self._windows: dict[tuple[int, int], np.ndarray] = {}
        self._first_index = self._first_indices()

    @classmethod
    def empty(cls, feature: str, feature_shape: tuple[int, ...], feature_dtype: str, action_dim: int,
              state_dim: int) -> "Replay":
        arrays = {feature: np.zeros((0, *feature_shape), feature_dtype), "action": np.zeros((0, action_dim)),
                  "reward": np.zeros(0), "is_first": np.zeros(0, bool), "is_terminal": np.zeros(0, bool),
                  "state": np.zeros((0, state_dim))}
        return cls(arrays, np.zeros(0, np.int64), feature)

    # -- contents -------------------------------------------------------------------------------
    @property
    def obs(self) -> torch.Tensor:
        return self._data["obs"][:self._size]

    @property
    def action(self) -> torch.Tensor:
        return self._data["action"][:self._size]

    @property
    def reward(self) -> torch.Tensor:
        return self._data["reward"][:self._size]

    @property
    def is_first(self) -> torch.Tensor:
        return self._data["is_first"][:self._size]

    @property
    def is_terminal(self) -> torch.Tensor:
        return self._data["is_terminal"][:self._size]

    @property
    def state(self) -> np.ndarray:
        return self._data["state"][:self._size].numpy()

    @property
    def episode_end(self) -> np.ndarray:
        return np.append(self.episode_start[1:], self._size)

    @property
    def frames(self) -> int:
        return self._size

    @property
    def episodes(self) -> int:
        return len(self.episode_start)

    @property
    def action_dim(self) -> int:
        return self._data["action"].shape[1]

    def select_episodes(self, episode_ids: list[int]) -> "Replay":
        """A replay holding only the given episodes (in that order)."""
        starts, ends = self.episode_start, self.episode_end
        spans = [np.arange(starts[e], ends[e]) for e in episode_ids]
        index = np.concatenate(spans)
        lengths = np.array([len(s) for s in spans])
        arrays = {self.feature: self.obs.numpy()[index], **{name: self._data[name][:self._size].numpy()[index]
                                                             for name in STEP_FIELDS}}
        return Replay(arrays, np.concatenate([[0], np.cumsum(lengths)[:-1]]), self.feature)

    def append_episode(self, arrays: dict[str, np.ndarray]) -> None:
        """Add one whole episode (`self.feature` and the step fields, frame axis first)."""
        length = len(arrays[self.feature])
        needed = self._size + length
        if needed > len(self._data["obs"]):
            capacity = max(needed, 2 * len(self._data["obs"]), 1024)
            for name, tensor in self._data.items():
                grown = torch.zeros((capacity, *tensor.shape[1:]), dtype=tensor.dtype)
                grown[:self._size] = tensor[:self._size]
                self._data[name] = grown
        self._data["obs"][self._size:needed] = _as_tensor(arrays[self.feature])
        for name in STEP_FIELDS:
            self._data[name][self._size:needed] = _as_tensor(arrays[name], STEP_DTYPES[name])
        self.episode_start = np.append(self.episode_start, self._size)
        self._size = needed
        self._windows.clear()
        self._first_index = self._first_indices()

    # -- sampling -------------------------------------------------------------------------------
    def window_starts(self, length: int, stride: int = 1) -> np.ndarray:
        """First frame of every window of `length` frames lying inside one episode."""
        if (length, stride) not in self._windows:
            starts = [np.arange(s, e - length + 1, stride) for s, e in zip(self.episode_start, self.episode_end)]
            self._windows[length, stride] = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        starts = self._windows[length, stride]
        if len(starts) == 0:
            longest = int((self.episode_end - self.episode_start).max(initial=0))
            raise WorldModelError(f"no episode has {length} frames (longest: {longest}); use a shorter sequence "
                            f"length or collect longer episodes")
        return starts

    def has_windows(self, length: int) -> bool:
        return bool(np.any(self.episode_end - self.episode_start >= length))

    def sample(self, batch: int, length: int, rng: np.random.Generator, stack: int = 1) -> dict[str, torch.Tensor]:
        """`batch` windows of `length` frames, uniformly over all windows inside episodes."""
        starts = self.window_starts(length)
        return self.gather(torch.from_numpy(starts[rng.integers(len(starts), size=batch)]), length, stack)

    def gather(self, starts: torch.Tensor, length: int, stack: int = 1) -> dict[str, torch.Tensor]:
        """Windows from the given first frames. With `stack` > 1, `obs[b, t]` holds the last
        `stack` frames up to t (oldest first), repeating the episode's first frame before it."""
        index = starts[:, None] + torch.arange(length)
        first = self._first_index[index]
        previous = (index - 1).clamp(min=0)
        has_previous = (index > first).unsqueeze(-1)
        obs = self._data["obs"]
        if stack == 1:
            obs = obs[index]
        else:
            offsets = torch.arange(stack - 1, -1, -1)
            obs = obs[torch.maximum(index.unsqueeze(-1) - offsets, first.unsqueeze(-1))]
        action = self._data["action"]
        return {"obs": obs, "action": action[index],
                "prev_action": torch.where(has_previous, action[previous], 0.0),
                "reward": self._data["reward"][index], "is_first": self._data["is_first"][index],
                "is_terminal": self._data["is_terminal"][index]}

    def _first_indices(self) -> torch.Tensor:
        lengths = self.episode_end - self.episode_start
        return torch.from_numpy(np.repeat(self.episode_start, lengths))


def _as_tensor(values: np.ndarray, dtype=None) -> torch.Tensor:
    """Embeddings are stored as float16: convert once to float32 rather than per batch; pixels stay uint8."""
    values = np.asarray(values)
    if dtype is None:
        dtype = values.dtype if values.dtype == np.uint8 else np.float32
    return torch.from_numpy(np.ascontiguousarray(values, dtype=dtype))


def concat_batches(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch from several (e.g. offline and online windows), along the batch axis."""
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def split_episodes(episodes: int, validation_fraction: float, split_seed: int = 0) -> tuple[list[int], list[int]]:
    """Training and held-out episode ids: a fixed shuffle (not the training seed, so every seed of
    a study is scored on the same episodes); at least one episode on each side."""
    if episodes < 2:
        raise WorldModelError(f"the store has {episodes} episode(s); hold-out validation needs at least 2")
    order = np.random.default_rng(split_seed).permutation(episodes)
    held_out = min(max(1, round(episodes * validation_fraction)), episodes - 1)
    return sorted(order[held_out:].tolist()), sorted(order[:held_out].tolist())

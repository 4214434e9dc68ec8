"""Several envs of one id and look, stepped in parallel, for online fine-tuning and evaluation.

One env runs in this process. With more, each lives in a worker process of its own (spawned,
not forked: GL contexts and simulator state do not survive a fork), and only the envs named in
a step are stepped, so an env whose episode has ended costs nothing while the others finish.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import gymnasium

from pipeline.envs.registry import check_variant, make_env

_worker_env: list[gymnasium.Env] = []   # the env of a worker process


def _start_env(env_id: str, variant: str, variant_seed: int, options: dict[str, Any]) -> None:
    _worker_env.append(make_env(env_id, variant, variant_seed, **options))


def _reset(seed: int) -> dict:
    return _worker_env[0].reset(seed=seed)[0]


def _step(action) -> tuple:
    observation, reward, terminated, truncated, _ = _worker_env[0].step(action)
    return observation, float(reward), bool(terminated), bool(truncated)


def _action_space() -> gymnasium.Space:
    return _worker_env[0].action_space


class EnvPool:
    def __init__(self, env_id: str, variant: str, variant_seed: int, count: int, **options: Any):
        check_variant(env_id, variant)
        self.count = count
        self._local: gymnasium.Env | None = None
        self._workers: list[ProcessPoolExecutor] = []
        if count == 1:
            self._local = make_env(env_id, variant, variant_seed, **options)
            self.action_space = self._local.action_space
        else:
            context = multiprocessing.get_context("spawn")
            self._workers = [ProcessPoolExecutor(1, context, initializer=_start_env,
                                                 initargs=(env_id, variant, variant_seed, options))
                             for _ in range(count)]
            self.action_space = self._workers[0].submit(_action_space).result()

    def reset(self, seeds: list[int]) -> list[dict]:
        """Start an episode in each of the first len(seeds) envs; their first observations."""
        if self._local is not None:
            return [self._local.reset(seed=seeds[0])[0]]
        futures = [worker.submit(_reset, seed) for worker, seed in zip(self._workers, seeds)]
        return [future.result() for future in futures]

    def step(self, actions: dict[int, Any]) -> dict[int, tuple]:
        """Step env i with actions[i]: (observation, reward, terminated, truncated) per env."""
        if self._local is not None:
            observation, reward, terminated, truncated, _ = self._local.step(actions[0])
            return {0: (observation, float(reward), bool(terminated), bool(truncated))}
        futures = {i: self._workers[i].submit(_step, action) for i, action in actions.items()}
        return {i: future.result() for i, future in futures.items()}

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        for worker in self._workers:
            worker.shutdown(cancel_futures=True)

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

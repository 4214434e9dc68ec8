"""Episodes played: by a policy in one env, recording its frames (`collect_episode`), or by an
actor that sees frames through a frozen encoder, in parallel envs (`play_episodes`).

Collection records frames; fine-tuning, evaluation and agents that collect play through the
encoder: each frame is encoded once, batched across the envs, by the encoder that built the
store, and the actor sees those features. Evaluation plays without exploration on its own RNG
(`evaluate_agent`); uniformly random actions on the same episode seeds give the floor
(`random_returns`). What is recorded follows the trajectory store's RLDS convention (step t:
frame t or its features, the reward received on arriving at it, the action taken after it), with
actions stored as the vectors `pipeline.envs.actions` defines, ready for a trajectory shard, an
embedding store or a replay.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import gymnasium
import numpy as np
import torch

from pipeline.encoders.store_encoder import StoreEncoder
from pipeline.envs import make_env
from pipeline.envs.actions import action_dim, is_discrete, to_env_action, to_stored
from pipeline.envs.env_pool import EnvPool
from pipeline.envs.store_env import env_options
from pipeline.policies import Policy, RandomPolicy
from pipeline.storage.episode import Episode


def collect_episode(env: gymnasium.Env, policy: Policy, env_seed: int, policy_seed: int,
                    max_steps: int | None = None,
                    on_frame: Callable[[np.ndarray], None] | None = None) -> Episode:
    """Run one episode to its end (or `max_steps`) in the RLDS step convention.

    Actions are stored as vectors (`pipeline.envs.actions`: one-hot for discrete envs). `on_frame`
    sees each frame as soon as it is rendered (collection hands it to the shard's writer process).
    """
    observation, _ = env.reset(seed=env_seed)
    policy.reset(policy_seed)
    frames, states, actions, rewards = [observation["image"]], [observation["state"]], [], [0.0]
    if on_frame:
        on_frame(observation["image"])
    terminated = False
    while True:
        action = policy.act(observation)
        observation, reward, terminated, truncated, _ = env.step(action)
        actions.append(to_stored(action, env.action_space))
        rewards.append(reward)
        frames.append(observation["image"])
        states.append(observation["state"])
        if on_frame:
            on_frame(observation["image"])
        if terminated or truncated or (max_steps is not None and len(actions) >= max_steps):
            break
    actions.append(np.zeros_like(actions[0]))  # no action follows the last observation
    length = len(frames)
    flags = {name: np.zeros(length, bool) for name in ("is_first", "is_last", "is_terminal")}
    flags["is_first"][0] = flags["is_last"][-1] = True
    flags["is_terminal"][-1] = terminated
    return Episode(frames=np.stack(frames), action=np.stack(actions), reward=np.asarray(rewards, np.float32),
                   state=np.stack(states), **flags)


class StepTimer:
    """Seconds spent per part of the loop (simulator, encoder, agent, learner)."""

    def __init__(self, seconds: dict[str, float] | None = None):
        self.seconds: dict[str, float] = defaultdict(float, seconds or {})

    @contextlib.contextmanager
    def __call__(self, part: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start


@dataclass
class PlayedEpisode:
    arrays: dict[str, np.ndarray]   # the feature and step arrays, frame axis first
    total_return: float
    first_frame: np.ndarray         # the first frame the actor saw (H, W, 3)

    @property
    def steps(self) -> int:
        return len(self.arrays["reward"]) - 1


class AgentActor:
    """An agent (world_models) acting for several envs at once, keeping its state between steps."""

    def __init__(self, agent: torch.nn.Module, device: str, explore: bool):
        self.agent, self.device, self.explore = agent, device, explore
        self.state = None

    def __call__(self, features: np.ndarray, is_first: np.ndarray) -> np.ndarray:
        if self.state is None or is_first.all():
            self.state = self.agent.initial_state(len(features))
        obs = torch.from_numpy(features).to(self.device)
        obs = obs if obs.dtype == torch.uint8 else obs.float()
        training = self.agent.training
        self.agent.eval()
        actions, self.state = self.agent.act(obs, self.state, torch.from_numpy(is_first).to(self.device), self.explore)
        self.agent.train(training)
        return actions.cpu().numpy()


class RandomActor:
    """Uniform random action vectors: over [-1, 1]^A, or one-hot for discrete actions."""

    def __init__(self, space, rng: np.random.Generator):
        self.space, self.rng = space, rng

    def __call__(self, features: np.ndarray, is_first: np.ndarray) -> np.ndarray:
        count, size = len(features), action_dim(self.space)
        if is_discrete(self.space):
            return np.eye(size, dtype=np.float32)[self.rng.integers(size, size=count)]
        return self.rng.uniform(-1.0, 1.0, (count, size)).astype(np.float32)


def play_episodes(pool: EnvPool, encoder: StoreEncoder, actor: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  seeds: list[int], max_steps: int | None = None,
                  after_step: Callable[[list[int]], None] | None = None,
                  timer: StepTimer | None = None, blocks: int = 1) -> list[PlayedEpisode]:
    """One episode per seed, in envs 0..len(seeds)-1 of `pool`, all started together.

    `after_step(envs)` runs after every parallel step with the envs that stepped (fine-tuning
    trains there). With `blocks` > 1 the envs fall into that many equal consecutive blocks, one
    per seed of a batched agent, and each block's frames are encoded apart, in the batches a lone
    seed's would be (an encoder's rounding may depend on its batch size).
    """
    timer = timer or StepTimer()
    count, space = len(seeds), pool.action_space
    block_size = count // blocks
    with timer("simulator"):
        observations = pool.reset(seeds)
    first_frames = [obs["image"] for obs in observations]
    with timer("encoder"):
        features = _encode_by_block(encoder, observations, list(range(count)), block_size)
    record = [defaultdict(list) for _ in range(count)]
    for i, obs in enumerate(observations):
        record[i]["feature"].append(features[i].copy())   # `features` is overwritten as the envs step
        record[i]["state"].append(obs["state"])
        record[i]["reward"].append(0.0)
    is_first, active = np.ones(count, bool), np.ones(count, bool)
    while active.any():
        with timer("agent"):
            vectors = actor(features, is_first)
        env_actions = {i: to_env_action(vectors[i], space) for i in np.flatnonzero(active)}
        with timer("simulator"):
            results = pool.step(env_actions)
        stepped = sorted(results)
        with timer("encoder"):
            new_features = _encode_by_block(encoder, [results[i][0] for i in stepped], stepped, block_size)
        for row, i in enumerate(stepped):
            observation, reward, terminated, truncated = results[i]
            episode = record[i]
            episode["action"].append(to_stored(env_actions[i], space))
            episode["feature"].append(new_features[row])
            episode["state"].append(observation["state"])
            episode["reward"].append(reward)
            features[i] = new_features[row]
            if terminated or truncated or (max_steps is not None and len(episode["action"]) >= max_steps):
                active[i] = False
                episode["terminated"] = terminated
        is_first[:] = False
        if after_step is not None:
            after_step(stepped)
    return [_finish(episode, encoder.feature, first_frames[i]) for i, episode in enumerate(record)]


def _encode_by_block(encoder: StoreEncoder, observations: list[dict], envs: list[int], block_size: int) -> np.ndarray:
    """The features of the observations of `envs` (ascending), encoded one block of envs at a time."""
    parts, first = [], 0
    while first < len(envs):
        last = first
        while last < len(envs) and envs[last] // block_size == envs[first] // block_size:
            last += 1
        parts.append(encoder.observe(observations[first:last]))
        first = last
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class BlockActor:
    """Equal consecutive blocks of envs, each acted for by its own actor (one per seed of a
    batched fine-tune, e.g. each seed's random actions from its own generator)."""

    def __init__(self, actors: list):
        self.actors = actors

    def __call__(self, features: np.ndarray, is_first: np.ndarray) -> np.ndarray:
        size = len(features) // len(self.actors)
        parts = [actor(features[k * size:(k + 1) * size], is_first[k * size:(k + 1) * size])
                 for k, actor in enumerate(self.actors)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def random_returns(settings: dict, variant: str, seeds: list[int], max_steps: int | None) -> list[float]:
    """Returns of uniformly random actions on the given episode seeds: the floor of every curve.

    The same actions and returns as `collect_episode` with a `RandomPolicy`, without rendering.
    """
    env = make_env(settings["env"], variant, settings["variant_seed"], step_frames=False, **env_options(settings))
    policy = RandomPolicy(env.action_space)
    returns = []
    try:
        for seed in seeds:
            observation, _ = env.reset(seed=seed)
            policy.reset(seed)
            rewards, done = [0.0], False
            while not done:
                observation, reward, terminated, truncated, _ = env.step(policy.act(observation))
                rewards.append(reward)
                done = terminated or truncated or (max_steps is not None and len(rewards) > max_steps)
            returns.append(float(np.asarray(rewards, np.float32).sum()))   # summed as Episode.total_return
    finally:
        env.close()
    return returns


def evaluate_agent(agent, pool: EnvPool, encoder: StoreEncoder, seeds: list[list[int]], max_steps: int | None,
                   device: str, rng_seeds: tuple[int, ...]) -> list[list[PlayedEpisode]]:
    """Episodes without exploration, on their own RNG (torch's, and the agent's own generators):
    evaluating never changes training. Seed k of the agent's model (one, or each seed of a
    batched tdmpc) plays the episodes `seeds[k]` on the generators of `rng_seeds[k]`, in blocks of
    `pool.count / len(seeds)` envs, as it would alone."""
    blocks, per_block = len(seeds), pool.count // len(seeds)
    played: list[list[PlayedEpisode]] = [[] for _ in seeds]
    with torch.random.fork_rng(), agent.forked_noise(tuple(rng_seeds)):
        torch.manual_seed(rng_seeds[0])   # dreamer acts from torch's generator (its models hold one seed)
        for first in range(0, len(seeds[0]), per_block):
            chunk = [block[first:first + per_block] for block in seeds]
            episodes = play_episodes(pool, encoder, AgentActor(agent, device, explore=False),
                                     [seed for block in chunk for seed in block], max_steps, blocks=blocks)
            size = len(chunk[0])
            for k in range(blocks):
                played[k] += episodes[k * size:(k + 1) * size]
    return played


def _finish(episode: dict, feature: str, first_frame: np.ndarray) -> PlayedEpisode:
    actions = np.stack(episode["action"])
    length = len(actions) + 1
    flags = {name: np.zeros(length, bool) for name in ("is_first", "is_last", "is_terminal")}
    flags["is_first"][0] = flags["is_last"][-1] = True
    flags["is_terminal"][-1] = episode["terminated"]
    reward = np.asarray(episode["reward"], np.float32)
    arrays = {feature: np.stack(episode["feature"]), "action": np.concatenate([actions, np.zeros_like(actions[:1])]),
              "reward": reward, "state": np.stack(episode["state"]).astype(np.float32), **flags}
    return PlayedEpisode(arrays, float(reward.sum()), first_frame)

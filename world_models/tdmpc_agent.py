"""TD-MPC2's agent: MPPI planning in the latent space of its world model.

Each step the planner scores `num_samples` action sequences over the model's `horizon`:
`num_pi_trajs` of them rolled out by the policy prior, the rest drawn from a Gaussian whose mean
starts from the previous step's plan shifted by one. A sequence's value is its discounted
predicted rewards plus the discounted Q of the policy prior's action at its end (in episodic
envs, nothing after a predicted terminal). For `mpc_iterations` rounds (2 more for actions of 20
or more dimensions) the Gaussian is refitted to the `num_elites` best sequences, weighted
by exp(temperature * (value - best)); the action comes from one elite drawn by those weights,
plus exploration noise of the final std when exploring. The agent sees a stack of the last
`frame_stack` observations, repeating the episode's first one, as the replay does in training.

`plan` works on every seed of the model at once (a leading seed axis on every tensor); its random
numbers are drawn before it, from each seed's own generator (`plan_noise`), so it compiles into
one graph and a seed plans as it would alone.
"""

from __future__ import annotations

import torch
from torch import nn

from world_models.tdmpc import TDMPCWorldModel


def iterations(model: TDMPCWorldModel) -> int:
    return model.cfg.mpc_iterations + 2 * (model.action_dim >= 20)   # TD-MPC2's heuristic for large action spaces


def plan_noise(model: TDMPCWorldModel, batch: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Every random number of one planning call for `batch` envs per seed, (seeds, ...)."""
    cfg, noise, action_dim, rounds = model.cfg, model.noise, model.action_dim, iterations(model)
    horizon, samples, policy_count = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs
    return {"policy_rollout": noise.normal((horizon, batch, policy_count, action_dim), device),
            "samples": noise.normal((rounds, batch, samples - policy_count, horizon, action_dim), device),
            "final_action": noise.normal((rounds, batch, samples, action_dim), device),
            "final_pair": noise.pairs(cfg.num_q, device, draws=rounds),
            "choice": noise.uniform((batch, 1), device),
            "explore": noise.normal((batch, action_dim), device)}


@torch.no_grad()
def estimate_value(model: TDMPCWorldModel, z: torch.Tensor, actions: torch.Tensor, final_noise: torch.Tensor,
                   pair: torch.Tensor) -> torch.Tensor:
    """(seeds, ..., latent) starts and (seeds, ..., H, A) action sequences -> (seeds, ...) returns over
    the horizon; nothing counts after a predicted terminal (episodic envs). `final_noise` samples
    the policy prior's action at the end, `pair` the two Q-functions that value it."""
    value, discount = torch.zeros(z.shape[:-1], device=z.device), 1.0
    alive = torch.ones(z.shape[:-1], device=z.device)
    for t in range(actions.shape[-2]):
        value = value + discount * alive * model.predicted_reward(z, actions[..., t, :])
        z = model.next(z, actions[..., t, :])
        discount *= model.discount
        if model.termination_head is not None:
            alive = alive * (model.predicted_termination(z) <= 0.5).float()
    final_action, _ = model.act(z, final_noise)
    return value + discount * alive * model.q_value(z, final_action, pair, reduce="mean")


@torch.no_grad()
def plan(model: TDMPCWorldModel, z: torch.Tensor, previous_mean: torch.Tensor, noise: dict[str, torch.Tensor],
         explore: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(seeds, B, latent) latents, (seeds, B, H, A) previous plans -> (seeds, B, A) actions in [-1, 1],
    (seeds, B, H, A) plans."""
    cfg, (seeds, batch) = model.cfg, z.shape[:2]
    horizon, samples, policy_count = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs
    policy_actions = []
    rolled = z.unsqueeze(2).expand(seeds, batch, policy_count, z.shape[-1])
    for t in range(horizon):
        action, _ = model.act(rolled, noise["policy_rollout"][:, t])
        policy_actions.append(action)
        rolled = model.next(rolled, action)
    policy_actions = torch.stack(policy_actions, 3)                         # (seeds, B, P, H, A)

    starts = z.unsqueeze(2).expand(seeds, batch, samples, z.shape[-1])
    mean = torch.cat([previous_mean[:, :, 1:], torch.zeros_like(previous_mean[:, :, :1])], 2)
    std = torch.full_like(mean, cfg.max_std)
    seed_rows = torch.arange(seeds, device=z.device)[:, None, None]
    env_rows = torch.arange(batch, device=z.device)[None, :, None]
    for i in range(iterations(model)):
        sampled = (mean.unsqueeze(2) + std.unsqueeze(2) * noise["samples"][:, i]).clamp(-1.0, 1.0)
        actions = torch.cat([policy_actions, sampled], 2)                    # (seeds, B, S, H, A)
        value = estimate_value(model, starts, actions, noise["final_action"][:, i],
                               noise["final_pair"][:, i]).nan_to_num(0.0)
        elite_value, elite_index = value.topk(cfg.num_elites, dim=2)
        elites = actions[seed_rows, env_rows, elite_index]                  # (seeds, B, E, H, A)
        score = torch.softmax(cfg.temperature * elite_value, dim=2)
        # Weighted over the elites along the last axis (a row per seed, env, step and action
        # dimension), which rounds the same whatever the number of seeds.
        weights, by_elite = score[:, :, None, None], elites.permute(0, 1, 3, 4, 2).contiguous()
        mean = (weights * by_elite).sum(-1)
        std = (weights * (by_elite - mean.unsqueeze(-1)).pow(2)).sum(-1).sqrt().clamp(cfg.min_std, cfg.max_std)
    # one elite drawn by its score: the first whose cumulative score passes a uniform draw
    choice = (score.cumsum(2) < noise["choice"]).sum(2, keepdim=True).clamp(max=cfg.num_elites - 1)
    chosen = elites[seed_rows[..., 0], env_rows[..., 0], choice[..., 0]]   # (seeds, B, H, A)
    action = chosen[:, :, 0]
    if explore:
        action = (action + std[:, :, 0] * noise["explore"]).clamp(-1.0, 1.0)
    return action, mean


class TDMPCAgent(nn.Module):
    """The planner, with the interface the stages share with dreamer: observations as (B, ...)
    rows, seed-major for a model of several seeds (B / seeds envs per seed)."""

    def __init__(self, world_model: TDMPCWorldModel):
        super().__init__()
        self.world_model, self.cfg = world_model, world_model.cfg
        self.action_dim = world_model.action_dim
        self.seeds = world_model.seeds
        self._plan = plan

    def compile(self, mode: str = "default") -> None:
        """Plan and update through torch.compile (inductor; CUDA graphs with mode="reduce-overhead")."""
        self._plan = torch.compile(plan, mode=mode, fullgraph=True)
        self.world_model.compile(mode)

    def forked_noise(self, seeds: tuple[int, ...]):
        """A block in which planning draws from fresh streams of `seeds`, one per seed of the model
        (evaluation episodes)."""
        return self.world_model.noise.forked(seeds)

    def initial_state(self, batch: int) -> dict[str, torch.Tensor | None]:
        device = self.world_model.bins.device
        return {"stack": None, "mean": torch.zeros(batch, self.cfg.horizon, self.action_dim, device=device)}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: dict, is_first: torch.Tensor,
            explore: bool) -> tuple[torch.Tensor, dict]:
        """Plan from the newest observation (B, ...) stacked with the previous ones."""
        stack = state["stack"]
        fresh = obs.unsqueeze(1).expand(-1, self.cfg.frame_stack, *obs.shape[1:])
        if stack is None:
            stack = fresh
        else:
            shifted = torch.cat([stack[:, 1:], obs.unsqueeze(1)], 1)
            stack = torch.where(is_first.view(-1, *[1] * (stack.dim() - 1)), fresh, shifted)
        previous_mean = state["mean"] * (~is_first).float().view(-1, 1, 1)
        model, seeds = self.world_model, len(self.seeds)
        z = model.encode(stack.unflatten(0, (seeds, -1)))
        noise = plan_noise(model, len(obs) // seeds, z.device)
        action, mean = self._plan(model, z, previous_mean.unflatten(0, (seeds, -1)), noise, explore)
        # copies: with CUDA graphs the next planning call overwrites its outputs in place
        action, mean = action.flatten(0, 1).clone(), mean.flatten(0, 1).clone()
        if model.discrete_actions:
            action = model.model_action(action)
        return action, {"stack": stack, "mean": mean}

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.world_model.make_optimizers()

    def train_step(self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        return self.world_model.train_step(batch, optimizers)

    def update(self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> list[dict[str, float]]:
        """One update of every seed on its own batch (seeds, B, ...)."""
        return self.world_model.update(batch, optimizers)

    def seed_state(self, k: int) -> dict:
        return {f"world_model.{name}": value for name, value in self.world_model.seed_state(k).items()}

    def load_seed_states(self, states: list[dict]) -> None:
        self.world_model.load_seed_states([{name.removeprefix("world_model."): value for name, value in state.items()}
                                           for state in states])

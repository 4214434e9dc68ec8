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
"""

from __future__ import annotations

import torch
from torch import nn

from world_models.tdmpc import TDMPCWorldModel


@torch.no_grad()
def estimate_value(model: TDMPCWorldModel, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """(..., latent) starts and (..., H, A) action sequences -> (...) returns over the horizon;
    nothing counts after a predicted terminal (episodic envs)."""
    value, discount = torch.zeros(z.shape[:-1], device=z.device), 1.0
    alive = torch.ones(z.shape[:-1], device=z.device)
    for t in range(actions.shape[-2]):
        value = value + discount * alive * model.predicted_reward(z, actions[..., t, :])
        z = model.next(z, actions[..., t, :])
        discount *= model.discount
        if model.termination_head is not None:
            alive = alive * (model.predicted_termination(z) <= 0.5).float()
    final_action, _ = model.act(z)
    return value + discount * alive * model.q_value(z, final_action, reduce="mean")


@torch.no_grad()
def plan(model: TDMPCWorldModel, z: torch.Tensor, previous_mean: torch.Tensor,
         explore: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, latent) latents, (B, H, A) previous plans -> (B, A) actions in [-1, 1], (B, H, A) plans."""
    cfg, batch, action_dim = model.cfg, z.shape[0], model.action_dim
    horizon, samples, policy_count = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs
    actions = torch.empty(batch, samples, horizon, action_dim, device=z.device)
    rolled = z.unsqueeze(1).expand(batch, policy_count, z.shape[-1])
    for t in range(horizon):
        actions[:, :policy_count, t], _ = model.act(rolled)
        rolled = model.next(rolled, actions[:, :policy_count, t])

    starts = z.unsqueeze(1).expand(batch, samples, z.shape[-1])
    mean = torch.zeros(batch, horizon, action_dim, device=z.device)
    mean[:, :-1] = previous_mean[:, 1:]
    std = torch.full_like(mean, cfg.max_std)
    rows = torch.arange(batch, device=z.device).unsqueeze(1)
    for _ in range(cfg.mpc_iterations + 2 * (action_dim >= 20)):   # TD-MPC2's heuristic for large action spaces
        noise = torch.randn(batch, samples - policy_count, horizon, action_dim, device=z.device)
        actions[:, policy_count:] = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1.0, 1.0)
        value = estimate_value(model, starts, actions).nan_to_num(0.0)
        elite_value, elite_index = value.topk(cfg.num_elites, dim=1)
        elites = actions[rows, elite_index]                                  # (B, K, H, A)
        score = torch.softmax(cfg.temperature * elite_value, dim=1)
        weights = score[..., None, None]
        mean = (weights * elites).sum(1)
        std = (weights * (elites - mean.unsqueeze(1)).pow(2)).sum(1).sqrt().clamp(cfg.min_std, cfg.max_std)
    chosen = elites[rows[:, 0], torch.multinomial(score, 1)[:, 0]]          # (B, H, A)
    action = chosen[:, 0]
    if explore:
        action = (action + std[:, 0] * torch.randn_like(action)).clamp(-1.0, 1.0)
    return action, mean


class TDMPCAgent(nn.Module):
    def __init__(self, world_model: TDMPCWorldModel):
        super().__init__()
        self.world_model, self.cfg = world_model, world_model.cfg
        self.action_dim = world_model.action_dim
        self._plan = plan

    def compile(self, mode: str = "default") -> None:
        """Plan and update through torch.compile (inductor; CUDA graphs with mode="reduce-overhead")."""
        self._plan = torch.compile(plan, mode=mode, fullgraph=True)
        self.world_model.compile(mode)

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
        action, mean = self._plan(self.world_model, self.world_model.encode(stack), previous_mean, explore)
        if self.world_model.discrete_actions:
            action = self.world_model.model_action(action)
        return action, {"stack": stack, "mean": mean}

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.world_model.make_optimizers()

    def train_step(self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        return self.world_model.train_step(batch, optimizers)

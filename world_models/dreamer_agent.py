"""DreamerV3's agent: its world model plus an actor and a critic trained in imagination.

From every filtered state of a replay batch the actor imagines `imag_horizon` steps in the
world model. Rewards and continuation flags come from the model's heads, values from the
critic (two-hot over DreamerV3's 255 bins). Lambda returns are normalised by the range between
their 5th and 95th percentiles (an EMA, never below 1). The actor maximises them with an entropy
bonus: for continuous actions by backpropagating the normalised returns through the model
(`actor_grad: dynamics`, as DreamerV2 and the common PyTorch port of DreamerV3 do for control),
for discrete ones by REINFORCE with normalised advantages (`reinforce`, which DreamerV3's own
code uses for both; at the budgets of short studies it learns continuous control far slower).
The critic regresses the returns and is regularised towards a slow EMA copy of itself. The
world model itself is only trained by its own loss.

Continuous actions: a bounded normal (mean tanh-squashed, std in [min_std, max_std]); discrete
actions: a one-hot categorical with 1% unimix and straight-through samples.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, Normal, OneHotCategorical

from world_models.dreamer import DreamerWorldModel, adaptive_gradient_clip
from world_models.layers import mlp
from world_models.math import soft_cross_entropy, two_hot, two_hot_decode


def lambda_returns(reward: torch.Tensor, cont: torch.Tensor, value: torch.Tensor, discount: float,
                   lam: float) -> torch.Tensor:
    """(H, N) rewards and continuation on arriving at steps 1..H, (H+1, N) values -> (H, N) returns:
    R_t = r_t + discount * c_t * ((1 - lam) * v_{t+1} + lam * R_{t+1}), bootstrapped with R_H = v_H."""
    returns, last = [], value[-1]
    for t in reversed(range(len(reward))):
        last = reward[t] + discount * cont[t] * ((1 - lam) * value[t + 1] + lam * last)
        returns.append(last)
    return torch.stack(returns[::-1])


class DreamerAgent(nn.Module):
    def __init__(self, world_model: DreamerWorldModel):
        super().__init__()
        self.world_model, self.cfg = world_model, world_model.cfg
        self.action_dim, self.discrete = world_model.action_dim, world_model.discrete_actions
        cfg, feat, action_dim = world_model.cfg, world_model.rssm.feat_dim, world_model.action_dim
        self.actor = mlp(feat, [cfg.units] * cfg.head_layers, action_dim if self.discrete else 2 * action_dim)
        self.critic = mlp(feat, [cfg.units] * cfg.head_layers, len(world_model.bins))
        nn.init.zeros_(self.critic[-1].weight)
        nn.init.zeros_(self.critic[-1].bias)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("return_low", torch.zeros(()))
        self.register_buffer("return_high", torch.zeros(()))

    @property
    def discount(self) -> float:
        return 1.0 - 1.0 / self.cfg.return_horizon

    # -- the policy ------------------------------------------------------------------------------
    def policy(self, feat: torch.Tensor):
        out = self.actor(feat)
        if self.discrete:
            probs = (1 - self.cfg.unimix) * F.softmax(out, -1) + self.cfg.unimix / self.action_dim
            return OneHotCategorical(probs=probs, validate_args=False)   # validation reads back from the GPU
        mean, std = out.chunk(2, -1)
        std = (self.cfg.actor_max_std - self.cfg.actor_min_std) * torch.sigmoid(std + 2.0) + self.cfg.actor_min_std
        return Independent(Normal(torch.tanh(mean), std, validate_args=False), 1, validate_args=False)

    def sample_action(self, dist, explore: bool, differentiable: bool = False) -> torch.Tensor:
        if self.discrete:
            if not explore:
                return F.one_hot(dist.probs.argmax(-1), self.action_dim).float()
            sample = dist.sample()
            return sample + dist.probs - dist.probs.detach() if differentiable else sample
        if not explore:
            return dist.mean
        return dist.rsample() if differentiable else dist.sample()

    def critic_value(self, feat: torch.Tensor, slow: bool = False) -> torch.Tensor:
        logits = (self.slow_critic if slow else self.critic)(feat)
        return two_hot_decode(F.softmax(logits, -1), self.world_model.bins)

    # -- acting ----------------------------------------------------------------------------------
    def initial_state(self, batch: int) -> dict[str, torch.Tensor]:
        deter, stoch = self.world_model.rssm.initial(batch)
        return {"deter": deter, "stoch": stoch, "action": torch.zeros(batch, self.action_dim, device=deter.device)}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: dict[str, torch.Tensor], is_first: torch.Tensor,
            explore: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step of filtering on the newest frame's features, then an action: (B, A) vectors
        in [-1, 1] (continuous) or one-hot (discrete)."""
        rssm, keep = self.world_model.rssm, (~is_first).float().unsqueeze(-1)
        deter, _ = rssm.img_step(state["deter"] * keep, state["stoch"] * keep, state["action"] * keep)
        post = rssm.log_probs(rssm.post_net(torch.cat([deter, self.world_model.embed(obs)], -1)))
        stoch = rssm.sample(post)
        action = self.sample_action(self.policy(self.world_model.features(deter, stoch)), explore)
        if not self.discrete:
            action = action.clamp(-1.0, 1.0)
        return action, {"deter": deter, "stoch": stoch, "action": action}

    # -- learning --------------------------------------------------------------------------------
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**self.world_model.make_optimizers(),
                "actor": torch.optim.Adam(self.actor.parameters(), lr=self.cfg.lr, eps=1e-8),
                "critic": torch.optim.Adam(self.critic.parameters(), lr=self.cfg.lr, eps=1e-8)}

    def train_step(self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        metrics, states = self.world_model.update(batch, optimizers)
        starts = {key: states[key].flatten(0, 1) for key in ("deter", "stoch")}
        return metrics | self.behaviour_step(starts, optimizers)

    def imagine(self, deter: torch.Tensor, stoch: torch.Tensor, differentiable: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(H+1, N, F) features from the starts on, and the (H, N, A) actions the actor took."""
        wm = self.world_model
        feats, actions = [wm.features(deter, stoch)], []
        for _ in range(self.cfg.imag_horizon):
            feat = feats[-1] if differentiable else feats[-1].detach()
            action = self.sample_action(self.policy(feat), explore=True, differentiable=differentiable)
            deter, prior = wm.rssm.img_step(deter, stoch, action)
            stoch = wm.rssm.sample(prior)
            feats.append(wm.features(deter, stoch))
            actions.append(action)
        return torch.stack(feats), torch.stack(actions)

    def behaviour_step(self, starts: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        cfg, wm = self.cfg, self.world_model
        dynamics = cfg.actor_grad == "dynamics" or (cfg.actor_grad == "auto" and not self.discrete)
        wm.requires_grad_(False)
        with torch.set_grad_enabled(dynamics):
            feats, actions = self.imagine(starts["deter"], starts["stoch"], differentiable=dynamics)
            reward = wm.predicted_reward(feats[1:])
            cont = wm.predicted_continue(feats[1:])
            value = self.critic_value(feats)
            returns = lambda_returns(reward, cont, value, self.discount, cfg.return_lambda)
        wm.requires_grad_(True)
        weight = torch.cumprod(torch.cat([torch.ones_like(cont[:1]), self.discount * cont[:-1]]), 0).detach()
        scale = self._update_return_scale(returns.detach())

        dist = self.policy(feats[:-1] if dynamics else feats[:-1].detach())
        entropy = dist.entropy()
        if dynamics:
            actor_objective = returns / scale
        else:
            actor_objective = dist.log_prob(actions.detach()) * ((returns - value[:-1]) / scale).detach()
        actor_loss = -(weight * (actor_objective + cfg.actor_entropy * entropy)).mean()
        _step(optimizers["actor"], actor_loss, self.actor, cfg.agc)

        critic_feats = feats[:-1].detach()
        logits = self.critic(critic_feats)
        with torch.no_grad():
            slow_value = self.critic_value(critic_feats, slow=True)
        critic_loss = (weight * (soft_cross_entropy(logits, two_hot(returns.detach(), wm.bins))
                                 + cfg.slow_critic_reg * soft_cross_entropy(logits, two_hot(slow_value, wm.bins)))).mean()
        _step(optimizers["critic"], critic_loss, self.critic, cfg.agc)
        with torch.no_grad():
            for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
                slow.lerp_(fast, cfg.slow_critic_rate)
        return {"actor": float(actor_loss.detach()), "critic": float(critic_loss.detach()),
                "imagined_return": float(returns.detach().mean()), "actor_entropy": float(entropy.mean().detach()),
                "return_scale": float(scale)}

    @torch.no_grad()
    def _update_return_scale(self, returns: torch.Tensor) -> torch.Tensor:
        low, high = torch.quantile(returns.flatten(), torch.tensor([0.05, 0.95], device=returns.device))
        self.return_low.lerp_(low, 1 - self.cfg.return_norm_decay)
        self.return_high.lerp_(high, 1 - self.cfg.return_norm_decay)
        return (self.return_high - self.return_low).clamp(min=1.0)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, module: nn.Module, agc: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    adaptive_gradient_clip(module.parameters(), agc)
    optimizer.step()

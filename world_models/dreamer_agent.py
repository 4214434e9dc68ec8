"""DreamerV3's agent: its world model plus an actor and a critic trained in imagination.

One update (danijar/dreamerv3 agent.py) sums the world model's loss, the actor's and the
critic's losses in imagination and the critic's loss on the replayed states, and takes one
optimiser step over all of them.

From every filtered state of a replay batch (gradients stopped) the actor imagines
`imag_horizon` steps in the world model. Rewards and continuation flags come from the model's
heads, values from the critic (two-hot over DreamerV3's 255 bins). Every imagined state,
the start included, is weighted by the discounted product of the predicted continuation flags
up to it. Lambda returns are normalised by the range between their 5th and 95th percentiles
(an EMA from 0 without debiasing, never below 1). The actor (`actor_grad`):
- `reinforce` (the reference, for discrete and continuous actions): REINFORCE on the advantage
  (return - value) / scale, on stopped imagined states, plus an entropy bonus.
- `dynamics` (DreamerV3's 2023 release and NM512/dreamerv3-torch for continuous control): the
  same advantage backpropagated through the sampled actions and the frozen model and critic;
  the actor sees its input with gradients stopped.
- `auto`: the 2023 release's choice, dynamics for continuous actions and reinforce for discrete.
The critic regresses the imagined returns, is regularised towards a slow EMA copy of itself,
and (scaled by `repval_scale`) regresses lambda returns along the replayed sequence that
bootstrap from the imagined return of each replayed state; that loss also trains the world
model's representation, as the reference's does.

Continuous actions: a bounded normal (mean tanh-squashed, std in [min_std, max_std]); discrete
actions: a one-hot categorical with 1% unimix and straight-through samples.
"""

from __future__ import annotations

import copy
import itertools
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, Normal, OneHotCategorical

from world_models.dreamer import DreamerWorldModel, mlp
from world_models.math import two_hot_decode, two_hot_log_likelihood
from world_models.optimizers import LaProp


def lambda_returns(reward: torch.Tensor, cont: torch.Tensor, value: torch.Tensor, discount: float,
                   lam: float) -> torch.Tensor:
    """(H, N) rewards and continuation on arriving at steps 1..H, (H+1, N) values -> (H, N) returns:
    R_t = r_t + discount * c_t * ((1 - lam) * v_{t+1} + lam * R_{t+1}), bootstrapped with R_H = v_H."""
    returns, last = [], value[-1]
    for t in reversed(range(len(reward))):
        last = reward[t] + discount * cont[t] * ((1 - lam) * value[t + 1] + lam * last)
        returns.append(last)
    return torch.stack(returns[::-1])


def imagination_weights(cont: torch.Tensor, discount: float) -> torch.Tensor:
    """(H+1, N) continuation of each imagined state, the start's included -> the weight of each
    state: discount^t times the product of the flags up to and including it."""
    return torch.cumprod(discount * cont, 0) / discount


@contextmanager
def frozen(*modules: nn.Module):
    """Gradients may flow through the modules' outputs but never reach their parameters."""
    for module in modules:
        module.requires_grad_(False)
    try:
        yield
    finally:
        for module in modules:
            module.requires_grad_(True)


class DreamerAgent(nn.Module):
    def __init__(self, world_model: DreamerWorldModel):
        super().__init__()
        self.world_model, self.cfg = world_model, world_model.cfg
        self.action_dim, self.discrete = world_model.action_dim, world_model.discrete_actions
        cfg, feat, action_dim = world_model.cfg, world_model.rssm.feat_dim, world_model.action_dim
        self.actor = mlp(feat, cfg.units, cfg.mlp_layers, action_dim if self.discrete else 2 * action_dim,
                         outscale=0.01)
        self.critic = mlp(feat, cfg.units, cfg.mlp_layers, len(world_model.bins), outscale=0.0)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("return_low", torch.zeros(()))
        self.register_buffer("return_high", torch.zeros(()))

    @property
    def discount(self) -> float:
        return 1.0 - 1.0 / self.cfg.return_horizon

    @property
    def backprop_actor(self) -> bool:
        return self.cfg.actor_grad == "dynamics" or (self.cfg.actor_grad == "auto" and not self.discrete)

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
        return self.decode_value((self.slow_critic if slow else self.critic)(feat))

    def decode_value(self, logits: torch.Tensor) -> torch.Tensor:
        return two_hot_decode(F.softmax(logits, -1), self.world_model.bins)

    # -- acting ----------------------------------------------------------------------------------
    def forked_noise(self, seeds: tuple[int, ...]):
        """Acting draws from torch's global generator, which the caller forks: nothing to do here."""
        return nullcontext()

    def initial_state(self, batch: int) -> dict[str, torch.Tensor]:
        deter, stoch = self.world_model.rssm.initial(batch)
        return {"deter": deter, "stoch": stoch, "action": torch.zeros(batch, self.action_dim, device=deter.device)}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: dict[str, torch.Tensor], is_first: torch.Tensor,
            explore: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step of filtering on the newest frame's features, then an action: (B, A) vectors
        in [-1, 1] (continuous) or one-hot (discrete)."""
        wm = self.world_model
        deter, stoch, _ = wm.rssm.obs_step(state["deter"], state["stoch"], state["action"], wm.embed(obs), is_first)
        action = self.sample_action(self.policy(wm.features(deter, stoch)), explore)
        if not self.discrete:
            action = action.clamp(-1.0, 1.0)
        return action, {"deter": deter, "stoch": stoch, "action": action}

    # -- learning --------------------------------------------------------------------------------
    def compile(self, mode: str = "default") -> None:
        self.world_model.compile(mode)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        params = itertools.chain(self.world_model.parameters(), self.actor.parameters(), self.critic.parameters())
        return {"agent": LaProp(params, lr=self.cfg.lr, agc=self.cfg.agc, warmup=self.cfg.warmup)}

    def train_step(self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        losses, metrics = self.losses(batch)
        total = losses["model"] + losses["policy"] + losses["value"] + self.cfg.repval_scale * losses["repval"]
        optimizers["agent"].zero_grad(set_to_none=True)
        total.backward()
        optimizers["agent"].step()
        with torch.no_grad():
            for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
                slow.lerp_(fast, self.cfg.slow_critic_rate)
        return metrics

    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The world model's total loss and the actor's, the critic's and the critic's replay
        loss (unscaled), and metrics."""
        cfg, wm = self.cfg, self.world_model
        model_loss, metrics, states = wm.loss(batch)
        backprop = self.backprop_actor
        with frozen(wm, self.critic), torch.set_grad_enabled(backprop):
            feats, actions = self.imagine(states["deter"].detach().flatten(0, 1),
                                          states["stoch"].detach().flatten(0, 1), differentiable=backprop)
            reward = wm.predicted_reward(feats[1:])
            cont = wm.predicted_continue(feats)
        critic_logits = self.critic(feats.detach())
        if backprop:   # values differentiable in the imagined states, never in the critic's weights
            with frozen(self.critic):
                value = self.critic_value(feats)
        else:
            value = self.decode_value(critic_logits.detach())
        returns = lambda_returns(reward, cont[1:], value, self.discount, cfg.return_lambda)
        weight = imagination_weights(cont.detach(), self.discount)[:-1]
        scale = self._update_return_scale(returns.detach())
        advantage = (returns - value[:-1]) / scale
        dist = self.policy(feats[:-1].detach())
        entropy = dist.entropy()
        objective = advantage if backprop else dist.log_prob(actions.detach()) * advantage.detach()
        policy_loss = -(weight * (objective + cfg.actor_entropy * entropy)).mean()
        value_loss = (weight * self._critic_loss(critic_logits[:-1], feats[:-1].detach(), returns.detach())).mean()

        # The replayed windows never cross an episode's end, so only their last step could be
        # one, where it changes no return: the returns need no is_last.
        batch_size, steps = batch["reward"].shape
        boot = returns[0].detach().reshape(batch_size, steps).T
        replay_returns = lambda_returns(batch["reward"].T[1:], (~batch["is_terminal"]).float().T[1:], boot,
                                        self.discount, cfg.return_lambda)
        replayed = states["feat"][:, :-1]
        repval_loss = self._critic_loss(self.critic(replayed), replayed, replay_returns.T).mean()

        losses = {"model": model_loss, "policy": policy_loss, "value": value_loss, "repval": repval_loss}
        metrics |= {"actor": float(policy_loss.detach()), "critic": float(value_loss.detach()),
                    "critic_replay": float(repval_loss.detach()), "imagined_return": float(returns.detach().mean()),
                    "actor_entropy": float(entropy.detach().mean()), "return_scale": float(scale)}
        return losses, metrics

    def imagine(self, deter: torch.Tensor, stoch: torch.Tensor, differentiable: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(H+1, N, F) features from the starts on, and the (H, N, A) actions the actor took."""
        wm = self.world_model
        feats, actions = [wm.features(deter, stoch)], []
        for _ in range(self.cfg.imag_horizon):
            action = self.sample_action(self.policy(feats[-1].detach()), explore=True, differentiable=differentiable)
            deter, prior = wm.rssm.img_step(deter, stoch, action)
            stoch = wm.rssm.sample(prior)
            feats.append(wm.features(deter, stoch))
            actions.append(action)
        return torch.stack(feats), torch.stack(actions)

    def _critic_loss(self, logits: torch.Tensor, feat: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        """Two-hot cross-entropy of the critic's logits on `feat` towards the returns and towards
        the slow critic's values."""
        with torch.no_grad():
            slow_value = self.critic_value(feat, slow=True)
        bins, log_probs = self.world_model.bins, F.log_softmax(logits, -1)
        return -(two_hot_log_likelihood(log_probs, returns, bins)
                 + self.cfg.slow_critic_reg * two_hot_log_likelihood(log_probs, slow_value, bins))

    @torch.no_grad()
    def _update_return_scale(self, returns: torch.Tensor) -> torch.Tensor:
        low, high = torch.quantile(returns.flatten(), torch.tensor([0.05, 0.95], device=returns.device))
        self.return_low.lerp_(low, 1 - self.cfg.return_norm_decay)
        self.return_high.lerp_(high, 1 - self.cfg.return_norm_decay)
        return (self.return_high - self.return_low).clamp(min=1.0)

"""TD-MPC2's world model on cached embeddings (or pixels): a decoder-free latent model.

The encoder sees the last `frame_stack` observations (3 embeddings, or 3 frames stacked along
channels) and outputs a SimNorm latent. Over a short horizon the latent dynamics are trained to
match the encoder's next latents (consistency), the reward head to predict the two-hot reward,
and an ensemble of Q-functions to match TD targets from an EMA target ensemble (kept in eval
mode: no dropout in the targets); later steps are weighted by rho^t. In episodic envs (true
terminals) a termination head is trained on the predicted latents and planning stops counting
rewards after a predicted terminal. A Gaussian policy prior (tanh-squashed) is trained to
maximise Q over all H+1 latents of the rollout, with TD-MPC2's entropy bonus scaled by the action
dimension. Pixels are shifted at random (up to 3 px, DrQ's augmentation) in training batches.
Initialisation as TD-MPC2: truncated normal (std 0.02) linear weights, zero biases, zero reward
and Q output layers. Arrays follow the RLDS convention: action[t] is taken at frame t and
reward[t + 1] is what it earns.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from world_models.layers import EnsembleLinear, EnsembleMLP, mlp
from world_models.math import simnorm, soft_cross_entropy, symexp, symlog, tdmpc_bins, two_hot, two_hot_decode


@dataclass(frozen=True)
class TDMPCConfig:
    latent_dim: int = 512          # vector inputs; for pixels the latent is the conv encoder's output
    enc_dim: int = 256
    mlp_dim: int = 512
    num_enc_layers: int = 2
    num_q: int = 5
    simnorm_dim: int = 8
    dropout: float = 0.01
    frame_stack: int = 3
    episodic: bool = False         # true terminals: termination head and termination-aware planning
    horizon: int = 3
    rho: float = 0.5
    consistency_coef: float = 20.0
    reward_coef: float = 0.1
    value_coef: float = 0.1
    termination_coef: float = 1.0
    entropy_coef: float = 1e-4
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    lr: float = 3e-4
    enc_lr_scale: float = 0.3
    grad_clip_norm: float = 20.0
    tau: float = 0.01
    discount: float = 0.99         # train derives it from the env's time limit, as TD-MPC2 does
    batch_size: int = 256
    num_channels: int = 32         # pixel encoder: a latent of num_channels x 4 x 4
    shift_pad: int = 3             # pixels: random shift of training batches, in px (0: none)
    # MPPI planning (world_models/tdmpc_agent.py), over `horizon` steps
    mpc_iterations: int = 6        # TD-MPC2 adds 2 for actions of 20 or more dimensions
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    temperature: float = 0.5
    min_std: float = 0.05
    max_std: float = 2.0

    @property
    def sequence_length(self) -> int:
        return self.horizon + 1

    def as_dict(self) -> dict:
        return asdict(self)


# Settings that shape the weights; the rest (losses, learning, planning) may change between
# offline training and fine-tuning.
ARCHITECTURE = ("latent_dim", "enc_dim", "mlp_dim", "num_enc_layers", "num_q", "simnorm_dim", "frame_stack",
                "num_channels", "episodic")

# TD-MPC2's model sizes (nicklashansen/tdmpc2 common/__init__.py): s = 1M, m = 5M (its default),
# l = 19M parameters, all planning as TD-MPC2 does; xs is for tests and CPU smoke runs, and plans
# with half the samples and fewer iterations.
PRESETS = {
    "xs": TDMPCConfig(latent_dim=64, enc_dim=64, mlp_dim=64, batch_size=64, mpc_iterations=4, num_samples=256,
                      num_elites=32, num_pi_trajs=12, num_channels=16),
    "s": TDMPCConfig(latent_dim=128, enc_dim=256, mlp_dim=384, num_q=2),
    "m": TDMPCConfig(),
    "l": TDMPCConfig(latent_dim=768, enc_dim=1024, mlp_dim=1024, num_enc_layers=3),
}


def heuristic_discount(episode_length: float, denominator: float = 5.0, low: float = 0.95, high: float = 0.995) -> float:
    """TD-MPC2's discount from the episode length (the env's time limit): longer episodes, longer horizon."""
    frac = episode_length / denominator
    return float(min(max((frac - 1) / frac, low), high)) if frac > 1 else low


def init_weights(module: nn.Module) -> None:
    """TD-MPC2's initialisation of linear layers: truncated normal weights (std 0.02), zero biases."""
    if isinstance(module, (nn.Linear, EnsembleLinear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """(N, C, H, W) float images, each moved by a random whole number of pixels in [-pad, pad] along
    each axis, edges replicated: DrQ's shift, which TD-MPC2 applies to every pixel batch."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    shift = torch.randint(0, 2 * pad + 1, (n, 2), device=images.device)
    rows = (torch.arange(h, device=images.device) + shift[:, :1])[:, None, :, None]
    cols = (torch.arange(w, device=images.device) + shift[:, 1:])[:, None, None, :]
    return padded[torch.arange(n, device=images.device)[:, None, None, None],
                  torch.arange(c, device=images.device)[None, :, None, None], rows, cols]


class SimNorm(nn.Module):
    def __init__(self, group_size: int):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return simnorm(x, self.group_size)


class PixelStackEncoder(nn.Module):
    """(stack, 3, 64, 64) uint8 frames -> latent: TD-MPC2's four-layer conv encoder, SimNorm on its
    flattened output (num_channels x 4 x 4)."""

    def __init__(self, stack: int, channels: int, simnorm_dim: int):
        super().__init__()
        self.out_features = channels * 4 * 4
        self.net = nn.Sequential(
            nn.Conv2d(3 * stack, channels, 7, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 5, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.Flatten(), SimNorm(simnorm_dim))

    def forward(self, frames: torch.Tensor, shift_pad: int = 0) -> torch.Tensor:
        lead = frames.shape[:-4]
        x = frames.reshape(-1, frames.shape[-4] * 3, 64, 64).float()
        if shift_pad:
            x = random_shift(x, shift_pad)
        return self.net(x / 255.0 - 0.5).reshape(*lead, -1)


class TDMPCWorldModel(nn.Module):
    def __init__(self, feature: str, feature_shape: tuple[int, ...], action_dim: int, cfg: TDMPCConfig,
                 discrete_actions: bool = False):
        super().__init__()
        self.cfg = cfg
        self.action_dim = action_dim
        self.discrete_actions = discrete_actions
        self.pixels = feature == "pixels"
        hidden = [cfg.mlp_dim, cfg.mlp_dim]
        if self.pixels:
            self.encoder = PixelStackEncoder(cfg.frame_stack, cfg.num_channels, cfg.simnorm_dim)
            latent = self.encoder.out_features
        else:
            latent = cfg.latent_dim
            self.encoder = mlp(cfg.frame_stack * feature_shape[0], [cfg.enc_dim] * max(cfg.num_enc_layers - 1, 1),
                               latent, SimNorm(cfg.simnorm_dim))
        self.latent_dim = latent
        self.dynamics = mlp(latent + action_dim, hidden, latent, SimNorm(cfg.simnorm_dim))
        self.reward_head = mlp(latent + action_dim, hidden, 101)
        self.termination_head = mlp(latent, hidden, 1) if cfg.episodic else None
        self.policy = mlp(latent, hidden, 2 * action_dim)
        self.q = EnsembleMLP(cfg.num_q, latent + action_dim, hidden, 101, dropout=cfg.dropout)
        self.apply(init_weights)
        for head in (self.reward_head[-1], self.q.output):
            nn.init.zeros_(head.weight)
        self.target_q = copy.deepcopy(self.q).requires_grad_(False).eval()
        self.register_buffer("bins", tdmpc_bins())
        self.register_buffer("q_scale", torch.ones(()))   # running 5-95 percentile range of Q
        self.discount = cfg.discount
        self._losses, self._policy_objective = self.losses, self.policy_objective

    def compile(self, mode: str = "default") -> None:
        """Compute the update's losses through torch.compile (TD-MPC2 compiles its update too); the
        optimiser steps stay eager (fused Adam)."""
        self._losses = torch.compile(self.losses, mode=mode, fullgraph=True)
        self._policy_objective = torch.compile(self.policy_objective, mode=mode, fullgraph=True)

    def train(self, mode: bool = True) -> "TDMPCWorldModel":
        super().train(mode)
        self.target_q.train(False)    # TD targets without dropout
        return self

    # -- the model ------------------------------------------------------------------------------
    def encode(self, obs: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """(..., stack, D) embeddings or (..., stack, 3, 64, 64) frames -> (..., latent); `augment`
        shifts pixels at random (training batches)."""
        if self.pixels:
            return self.encoder(obs, self.cfg.shift_pad if augment else 0)
        return self.encoder(obs.flatten(-2))

    def model_action(self, action: torch.Tensor) -> torch.Tensor:
        """What the heads see of an action vector: itself, or for discrete envs the one-hot of its
        argmax (what the env executes and the data holds), with straight-through gradients."""
        if not self.discrete_actions:
            return action
        one_hot = F.one_hot(action.argmax(-1), self.action_dim).to(action.dtype)
        return one_hot + action - action.detach()

    def next(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.dynamics(torch.cat([z, self.model_action(action)], -1))

    def reward_logits(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.reward_head(torch.cat([z, self.model_action(action)], -1))

    def predicted_reward(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return symexp(two_hot_decode(F.softmax(self.reward_logits(z, action), -1), self.bins))

    def predicted_termination(self, z: torch.Tensor) -> torch.Tensor:
        """Probability that `z` is a terminal state (0 where the env is not episodic)."""
        if self.termination_head is None:
            return torch.zeros(z.shape[:-1], device=z.device)
        return torch.sigmoid(self.termination_head(z).squeeze(-1))

    def act(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A sample of the policy prior (tanh-squashed Gaussian) and its entropy as TD-MPC2's policy
        loss weighs it: scaled by the action dimension through the ratio of the Gaussian's
        log-probability to the squashed one's."""
        mean, log_std = self.policy(z).chunk(2, -1)
        log_std = self.cfg.log_std_min + 0.5 * (self.cfg.log_std_max - self.cfg.log_std_min) * (torch.tanh(log_std) + 1)
        noise = torch.randn_like(mean)
        gaussian_log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        action = torch.tanh(mean + noise * log_std.exp())
        log_prob = gaussian_log_prob - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1)
        scaled_entropy = -log_prob * (gaussian_log_prob * self.action_dim) / (log_prob + 1e-8)
        return action, scaled_entropy

    def q_value(self, z: torch.Tensor, action: torch.Tensor, target: bool = False, reduce: str = "min") -> torch.Tensor:
        """Two randomly chosen ensemble members, decoded; their min (for targets) or mean."""
        logits = (self.target_q if target else self.q)(torch.cat([z, self.model_action(action)], -1))
        pair = torch.randperm(self.cfg.num_q, device=z.device)[:2]
        values = symexp(two_hot_decode(F.softmax(logits[pair], -1), self.bins))
        return values.min(0).values if reduce == "min" else values.mean(0)

    # -- training --------------------------------------------------------------------------------
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        encoder = list(self.encoder.parameters())
        rest = [p for name, p in self.named_parameters()
                if not name.startswith(("encoder.", "policy.", "target_q.")) and p.requires_grad]
        # fused: one kernel for all tensors (on the CPU torch's default is a Python loop over them)
        return {"model": torch.optim.Adam([{"params": encoder, "lr": self.cfg.lr * self.cfg.enc_lr_scale},
                                           {"params": rest}], lr=self.cfg.lr, fused=True),
                "policy": torch.optim.Adam(self.policy.parameters(), lr=self.cfg.lr, eps=1e-5, fused=True)}

    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Consistency, reward, value (and termination) losses over the horizon; also the H+1
        latents of the rollout (the policy prior trains on them)."""
        cfg, horizon = self.cfg, self.cfg.horizon
        obs, action = batch["obs"], batch["action"][:, :horizon]
        reward, done = batch["reward"][:, 1:], batch["is_terminal"][:, 1:].float()
        with torch.no_grad():
            next_z = self.encode(obs[:, 1:], augment=True)
            next_action, _ = self.act(next_z)
            td_target = reward + self.discount * (1 - done) * self.q_value(next_z, next_action, target=True)
        z = self.encode(obs[:, 0], augment=True)
        latent_std = z.detach().std(0).mean()
        latents, consistency = [z], 0.0
        weights = cfg.rho ** torch.arange(horizon, dtype=torch.float32, device=obs.device)
        for t in range(horizon):
            z = self.next(z, action[:, t])
            consistency = consistency + weights[t] * F.mse_loss(z, next_z[:, t])
            latents.append(z)
        latents = torch.stack(latents, 1)                           # (B, H+1, latent)
        rolled = latents[:, :-1]
        reward_ce = soft_cross_entropy(self.reward_logits(rolled, action), two_hot(symlog(reward), self.bins))
        q_logits = self.q(torch.cat([rolled, action], -1))          # (num_q, B, H, bins)
        value_ce = soft_cross_entropy(q_logits, two_hot(symlog(td_target), self.bins).unsqueeze(0))
        parts = {"consistency": consistency / horizon,
                 "reward": (reward_ce.mean(0) * weights).sum() / horizon,
                 "value": (value_ce.mean(1) * weights).sum() / (horizon * cfg.num_q)}
        total = cfg.consistency_coef * parts["consistency"] + cfg.reward_coef * parts["reward"] + cfg.value_coef * parts["value"]
        if self.termination_head is not None:
            parts["termination"] = F.binary_cross_entropy_with_logits(
                self.termination_head(latents[:, 1:]).squeeze(-1), done)
            total = total + cfg.termination_coef * parts["termination"]
        parts["latent_std"] = latent_std
        return total, parts, latents

    def train_step(self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        total, parts, latents = self._losses(batch)
        optimizers["model"].zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for g in optimizers["model"].param_groups for p in g["params"]], self.cfg.grad_clip_norm, foreach=True)
        optimizers["model"].step()
        policy_loss = self.policy_step(latents.detach(), optimizers["policy"])
        self.update_target()
        return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in parts.items()},
                "policy": policy_loss, "grad_norm": float(grad_norm)}

    def policy_objective(self, latents: torch.Tensor) -> torch.Tensor:
        """The policy prior's loss on the rollout's latents: Q scaled by its running 5-95 percentile
        range, plus the scaled entropy, weighted by rho^t (updates the range in place)."""
        action, scaled_entropy = self.act(latents)
        q = self.q_value(latents, action, reduce="mean")
        with torch.no_grad():
            spread = torch.quantile(q[:, 0], torch.tensor([0.05, 0.95], device=q.device)).diff()[0]
            self.q_scale.lerp_(spread.clamp(min=1.0), self.cfg.tau)
        weights = self.cfg.rho ** torch.arange(latents.shape[1], dtype=torch.float32, device=latents.device)
        return (-(self.cfg.entropy_coef * scaled_entropy + q / self.q_scale).mean(0) * weights).mean()

    def policy_step(self, latents: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
        self.q.requires_grad_(False)
        loss = self._policy_objective(latents)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip_norm, foreach=True)
        optimizer.step()
        self.q.requires_grad_(True)
        return float(loss.detach())

    @torch.no_grad()
    def update_target(self) -> None:
        torch._foreach_lerp_(list(self.target_q.parameters()), list(self.q.parameters()), self.cfg.tau)

    # -- model-quality metrics -------------------------------------------------------------------
    @torch.no_grad()
    def open_loop(self, batch: dict[str, torch.Tensor], context: int = 1) -> dict[str, torch.Tensor]:
        """From the latent of frame `context - 1`, roll the dynamics under the true actions and
        compare with the encoder's latents (MSE over latent dims, per horizon step), and the same
        for a baseline that copies the starting latent."""
        start = context - 1
        z = self.encode(batch["obs"][:, start])
        targets = self.encode(batch["obs"][:, start + 1:])
        predicted = []
        for t in range(targets.shape[1]):
            z = self.next(z, batch["action"][:, start + t])
            predicted.append(z)
        predicted = torch.stack(predicted, 1)
        start_latent = self.encode(batch["obs"][:, start]).unsqueeze(1)
        return {"model": (predicted - targets).pow(2).mean((0, 2)),
                "copy_last": (start_latent - targets).pow(2).mean((0, 2))}

    @torch.no_grad()
    def one_step_predictions(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reward aligned with frames: entry t predicts reward[t] from frame t-1 (entry 0 is 0)."""
        z = self.encode(batch["obs"][:, :-1])
        predicted = self.predicted_reward(z, batch["action"][:, :-1])
        return {"reward": F.pad(predicted, (1, 0))}

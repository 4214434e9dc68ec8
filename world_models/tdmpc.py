"""TD-MPC2's world model on cached embeddings (or pixels): a decoder-free latent model.

The encoder sees the last `frame_stack` observations (3 embeddings, or 3 frames stacked along
channels) and outputs a SimNorm latent. Over a short horizon the latent dynamics are trained to
match the encoder's next latents (consistency), the reward head to predict the two-hot reward,
and an ensemble of Q-functions to match TD targets from an EMA target ensemble; later steps are
weighted by rho^t. A Gaussian policy prior (tanh-squashed) is trained to maximise Q. Arrays follow
the RLDS convention: action[t] is taken at frame t and reward[t + 1] is what it earns.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from world_models.layers import EnsembleMLP, mlp
from world_models.math import simnorm, soft_cross_entropy, symexp, symlog, tdmpc_bins, two_hot, two_hot_decode


@dataclass(frozen=True)
class TDMPCConfig:
    latent_dim: int = 512
    enc_dim: int = 256
    mlp_dim: int = 512
    num_enc_layers: int = 2
    num_q: int = 5
    simnorm_dim: int = 8
    dropout: float = 0.01
    frame_stack: int = 3
    horizon: int = 3
    rho: float = 0.5
    consistency_coef: float = 20.0
    reward_coef: float = 0.1
    value_coef: float = 0.1
    entropy_coef: float = 1e-4
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    lr: float = 3e-4
    enc_lr_scale: float = 0.3
    grad_clip_norm: float = 20.0
    tau: float = 0.01
    discount: float = 0.99         # train derives it from the episode length, as TD-MPC2 does
    batch_size: int = 256
    num_channels: int = 32         # pixel encoder
    # MPPI planning (world_models/tdmpc_agent.py), over `horizon` steps
    mpc_iterations: int = 6
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
                "num_channels")

# TD-MPC2's model sizes (nicklashansen/tdmpc2 common/__init__.py): s = 1M, m = 5M (its default),
# l = 19M parameters, all planning as TD-MPC2 does; xs is for tests and CPU smoke runs, and plans
# with half the samples and fewer iterations.
PRESETS = {
    "xs": TDMPCConfig(latent_dim=64, enc_dim=64, mlp_dim=64, batch_size=64, mpc_iterations=4, num_samples=256,
                      num_elites=32, num_pi_trajs=12),
    "s": TDMPCConfig(latent_dim=128, enc_dim=256, mlp_dim=384, num_q=2),
    "m": TDMPCConfig(),
    "l": TDMPCConfig(latent_dim=768, enc_dim=1024, mlp_dim=1024, num_enc_layers=3),
}



def heuristic_discount(episode_length: float, denominator: float = 5.0, low: float = 0.95, high: float = 0.995) -> float:
    """TD-MPC2's discount from the episode length: longer episodes, longer horizon."""
    frac = episode_length / denominator
    return float(min(max((frac - 1) / frac, low), high)) if frac > 1 else low


class SimNorm(nn.Module):
    def __init__(self, group_size: int):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return simnorm(x, self.group_size)


class PixelStackEncoder(nn.Module):
    """(stack, 3, 64, 64) uint8 frames -> latent: TD-MPC2's four-layer conv encoder."""

    def __init__(self, stack: int, channels: int, latent_dim: int, simnorm_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3 * stack, channels, 7, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 5, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.Flatten(),
            nn.Linear(channels * 4 * 4, latent_dim), SimNorm(simnorm_dim))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        lead = frames.shape[:-4]
        x = frames.reshape(-1, frames.shape[-4] * 3, 64, 64).float() / 255.0 - 0.5
        return self.net(x).reshape(*lead, -1)


class TDMPCWorldModel(nn.Module):
    def __init__(self, feature: str, feature_shape: tuple[int, ...], action_dim: int, cfg: TDMPCConfig,
                 discrete_actions: bool = False):
        super().__init__()
        self.cfg = cfg
        self.action_dim = action_dim
        self.discrete_actions = discrete_actions
        self.pixels = feature == "pixels"
        latent, hidden = cfg.latent_dim, [cfg.mlp_dim, cfg.mlp_dim]
        if self.pixels:
            self.encoder = PixelStackEncoder(cfg.frame_stack, cfg.num_channels, latent, cfg.simnorm_dim)
        else:
            self.encoder = mlp(cfg.frame_stack * feature_shape[0], [cfg.enc_dim] * (cfg.num_enc_layers - 1),
                               latent, SimNorm(cfg.simnorm_dim))
        self.dynamics = mlp(latent + action_dim, hidden, latent, SimNorm(cfg.simnorm_dim))
        self.reward_head = mlp(latent + action_dim, hidden, 101)
        self.policy = mlp(latent, hidden, 2 * action_dim)
        self.q = EnsembleMLP(cfg.num_q, latent + action_dim, hidden, 101, dropout=cfg.dropout)
        for head in (self.reward_head[-1], self.q.output):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.target_q = copy.deepcopy(self.q).requires_grad_(False)
        self.register_buffer("bins", tdmpc_bins())
        self.register_buffer("q_scale", torch.ones(()))   # running 5-95 percentile range of Q
        self.discount = cfg.discount

    # -- the model ------------------------------------------------------------------------------
    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., stack, D) embeddings or (..., stack, 3, 64, 64) frames -> (..., latent)."""
        return self.encoder(obs if self.pixels else obs.flatten(-2))

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

    def act(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A sample of the policy prior and its log-probability (tanh-squashed Gaussian)."""
        mean, log_std = self.policy(z).chunk(2, -1)
        log_std = self.cfg.log_std_min + 0.5 * (self.cfg.log_std_max - self.cfg.log_std_min) * (torch.tanh(log_std) + 1)
        noise = torch.randn_like(mean)
        pre_tanh = mean + noise * log_std.exp()
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        action = torch.tanh(pre_tanh)
        log_prob = log_prob - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1)
        return action, log_prob

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
        return {"model": torch.optim.Adam([{"params": encoder, "lr": self.cfg.lr * self.cfg.enc_lr_scale},
                                           {"params": rest}], lr=self.cfg.lr),
                "policy": torch.optim.Adam(self.policy.parameters(), lr=self.cfg.lr, eps=1e-5)}

    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Consistency, reward and value losses over the horizon; also the rolled-out latents."""
        cfg, horizon = self.cfg, self.cfg.horizon
        obs, action = batch["obs"], batch["action"][:, :horizon]
        reward, done = batch["reward"][:, 1:], batch["is_terminal"][:, 1:].float()
        with torch.no_grad():
            next_z = self.encode(obs[:, 1:])
            next_action, _ = self.act(next_z)
            td_target = reward + self.discount * (1 - done) * self.q_value(next_z, next_action, target=True)
        z = self.encode(obs[:, 0])
        latents, consistency = [z], 0.0
        weights = cfg.rho ** torch.arange(horizon, dtype=torch.float32, device=obs.device)
        for t in range(horizon):
            z = self.next(z, action[:, t])
            consistency = consistency + weights[t] * F.mse_loss(z, next_z[:, t])
            latents.append(z)
        rolled = torch.stack(latents[:-1], 1)                       # (B, H, latent)
        reward_ce = soft_cross_entropy(self.reward_logits(rolled, action), two_hot(symlog(reward), self.bins))
        q_logits = self.q(torch.cat([rolled, action], -1))          # (num_q, B, H, bins)
        value_ce = soft_cross_entropy(q_logits, two_hot(symlog(td_target), self.bins).unsqueeze(0))
        parts = {"consistency": consistency / horizon,
                 "reward": (reward_ce.mean(0) * weights).sum() / horizon,
                 "value": (value_ce.mean(1) * weights).sum() / (horizon * cfg.num_q)}
        total = cfg.consistency_coef * parts["consistency"] + cfg.reward_coef * parts["reward"] + cfg.value_coef * parts["value"]
        return total, parts, rolled

    def train_step(self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        total, parts, rolled = self.losses(batch)
        optimizers["model"].zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for g in optimizers["model"].param_groups for p in g["params"]], self.cfg.grad_clip_norm)
        optimizers["model"].step()
        policy_loss = self.policy_step(rolled.detach(), optimizers["policy"])
        self.update_target()
        return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in parts.items()},
                "policy": policy_loss, "grad_norm": float(grad_norm)}

    def policy_step(self, latents: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
        self.q.requires_grad_(False)
        action, log_prob = self.act(latents)
        q = self.q_value(latents, action, reduce="mean")
        with torch.no_grad():
            spread = torch.quantile(q[:, 0], 0.95) - torch.quantile(q[:, 0], 0.05)
            self.q_scale.lerp_(spread.clamp(min=1.0), self.cfg.tau)
        weights = self.cfg.rho ** torch.arange(latents.shape[1], dtype=torch.float32, device=latents.device)
        loss = ((self.cfg.entropy_coef * log_prob - q / self.q_scale).mean(0) * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip_norm)
        optimizer.step()
        self.q.requires_grad_(True)
        return float(loss.detach())

    @torch.no_grad()
    def update_target(self) -> None:
        for target, online in zip(self.target_q.parameters(), self.q.parameters()):
            target.lerp_(online, self.cfg.tau)

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

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

One model holds `seeds`: a copy of every weight per seed (world_models/layers.py), trained
together in one update whose kernels are shared by all of them, as TD-MPC2 batches its
Q-ensemble. Every tensor the model takes or gives has a leading seed axis; seed k's losses,
gradients, clipping, optimiser steps and random numbers (world_models/seed_noise.py) are its own,
so it learns bit for bit as it would alone. `train_step` is the one-seed interface the stages
share with dreamer.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from world_models.errors import WorldModelError
from world_models.layers import StackedConv2d, StackedLinear, StackedMLP
from world_models.math import simnorm, soft_cross_entropy, symexp, symlog, tdmpc_bins, two_hot, two_hot_decode
from world_models.optimizers import clip_grad_norm_per_seed
from world_models.seed_noise import SeedNoise


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

# The buffers all seeds share (everything else in the state dict has a leading seed axis).
SHARED_BUFFERS = ("bins",)

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


@torch.no_grad()
def init_weights(model: nn.Module, generators: list[torch.Generator]) -> None:
    """TD-MPC2's initialisation, each seed's copy from that seed's generator: truncated normal
    linear weights (std 0.02) and zero biases; convolutions as torch's Conv2d initialises them."""
    for module in model.modules():
        for k, generator in enumerate(generators):
            if isinstance(module, StackedLinear):
                nn.init.trunc_normal_(module.weight[k], std=0.02, generator=generator)
            elif isinstance(module, StackedConv2d):
                nn.init.kaiming_uniform_(module.weight[k], a=math.sqrt(5), generator=generator)
                fan_in = module.weight[k][0].numel()
                nn.init.uniform_(module.bias[k], -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=generator)


def random_shift(images: torch.Tensor, pad: int, shift: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) float images, image i moved by `shift[i]` (whole pixels in [0, 2 pad], so
    [-pad, pad] about the centre) along each axis, edges replicated: DrQ's shift, which TD-MPC2
    applies to every pixel batch."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
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
    """(seeds, ..., stack, 3, 64, 64) uint8 frames -> (seeds, ..., latent): TD-MPC2's four-layer
    conv encoder per seed, SimNorm on its flattened output (num_channels x 4 x 4)."""

    def __init__(self, seeds: int, stack: int, channels: int, simnorm_dim: int):
        super().__init__()
        self.out_features = channels * 4 * 4
        self.convs = nn.ModuleList([StackedConv2d(seeds, 3 * stack, channels, 7, stride=2),
                                    StackedConv2d(seeds, channels, channels, 5, stride=2),
                                    StackedConv2d(seeds, channels, channels, 3, stride=2),
                                    StackedConv2d(seeds, channels, channels, 3, stride=1)])
        self.simnorm = SimNorm(simnorm_dim)

    def forward(self, frames: torch.Tensor, shift_pad: int = 0, shift: torch.Tensor | None = None) -> torch.Tensor:
        """`shift`: (seeds, N, 2) whole-pixel shifts of the N = prod(...) images, or None for none."""
        seeds, lead = frames.shape[0], frames.shape[1:-4]
        x = frames.reshape(seeds, -1, frames.shape[-4] * 3, 64, 64).float()
        if shift is not None:
            x = random_shift(x.flatten(0, 1), shift_pad, shift.flatten(0, 1)).view_as(x)
        x = x / 255.0 - 0.5
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return self.simnorm(x.flatten(2)).reshape(seeds, *lead, -1)


class TDMPCWorldModel(nn.Module):
    def __init__(self, feature: str, feature_shape: tuple[int, ...], action_dim: int, cfg: TDMPCConfig,
                 discrete_actions: bool = False, seeds: tuple[int, ...] = (0,)):
        super().__init__()
        self.cfg = cfg
        self.action_dim = action_dim
        self.discrete_actions = discrete_actions
        self.pixels = feature == "pixels"
        self.seeds = tuple(seeds)
        self.noise = SeedNoise(self.seeds)
        count, stack = len(self.seeds), (len(self.seeds),)
        hidden = [cfg.mlp_dim, cfg.mlp_dim]
        if self.pixels:
            self.encoder = PixelStackEncoder(count, cfg.frame_stack, cfg.num_channels, cfg.simnorm_dim)
            latent = self.encoder.out_features
        else:
            latent = cfg.latent_dim
            self.encoder = StackedMLP(stack, cfg.frame_stack * feature_shape[0],
                                      [cfg.enc_dim] * max(cfg.num_enc_layers - 1, 1), latent, SimNorm(cfg.simnorm_dim))
        self.latent_dim = latent
        self.dynamics = StackedMLP(stack, latent + action_dim, hidden, latent, SimNorm(cfg.simnorm_dim))
        self.reward_head = StackedMLP(stack, latent + action_dim, hidden, 101)
        self.termination_head = StackedMLP(stack, latent, hidden, 1) if cfg.episodic else None
        self.policy = StackedMLP(stack, latent, hidden, 2 * action_dim)
        self.q = StackedMLP((count, cfg.num_q), latent + action_dim, hidden, 101)
        init_weights(self, self.noise.init_generators)
        with torch.no_grad():
            for head in (self.reward_head.linears[-1], self.q.linears[-1]):
                head.weight.zero_()
        self.target_q = copy.deepcopy(self.q).requires_grad_(False)
        self.register_buffer("bins", tdmpc_bins())
        self.register_buffer("q_scale", torch.ones(count))   # running 5-95 percentile range of Q, per seed
        self.discount = cfg.discount
        self._losses, self._policy_objective = self.losses, self.policy_objective

    def compile(self, mode: str = "default") -> None:
        """Compute the update's losses through torch.compile (TD-MPC2 compiles its update too); the
        optimiser steps stay eager (fused Adam)."""
        self._losses = torch.compile(self.losses, mode=mode, fullgraph=True)
        self._policy_objective = torch.compile(self.policy_objective, mode=mode, fullgraph=True)

    def get_extra_state(self) -> dict[str, list[torch.Tensor]]:
        return {"noise": self.noise.state()}

    def set_extra_state(self, state: dict[str, list[torch.Tensor]]) -> None:
        self.noise.load_state(state["noise"])

    def seed_state(self, k: int) -> dict:
        """The state dict a one-seed model of seed `self.seeds[k]` would have: every tensor's slice
        k of the seed axis (the two-hot bins are shared), seed k's generator states."""
        state = self.state_dict()
        return {name: ({"noise": [value["noise"][k]]} if name == "_extra_state" else
                       value if name in SHARED_BUFFERS else value[k:k + 1].clone())
                for name, value in state.items()}

    def load_seed_states(self, states: list[dict]) -> None:
        """Load one-seed state dicts (`seed_state`'s, or one-seed checkpoints'), one per seed."""
        if len(states) != len(self.seeds):
            raise WorldModelError(f"{len(states)} seed states for a model of {len(self.seeds)} seeds")
        self.load_state_dict({name: ({"noise": [s["_extra_state"]["noise"][0] for s in states]}
                                     if name == "_extra_state" else states[0][name] if name in SHARED_BUFFERS
                                     else torch.cat([s[name] for s in states]))
                              for name in states[0]})

    def single_seed(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A batch of the one-seed interface, with the seed axis the model computes on."""
        if len(self.seeds) != 1:
            raise WorldModelError(f"this tdmpc model holds {len(self.seeds)} seeds; give every input a seed axis")
        return {key: value.unsqueeze(0) for key, value in batch.items()}

    # -- the model (every tensor: (seeds, ...)) --------------------------------------------------
    def encode(self, obs: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """(seeds, ..., stack, D) embeddings or (seeds, ..., stack, 3, 64, 64) frames -> (seeds, ..., latent);
        `shift` moves pixels (training batches' augmentation)."""
        if self.pixels:
            return self.encoder(obs, self.cfg.shift_pad, shift)
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

    def act(self, z: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A sample of the policy prior (tanh-squashed Gaussian; `noise`: standard normal, shaped
        as the action) and its entropy as TD-MPC2's policy loss weighs it: scaled by the action
        dimension through the ratio of the Gaussian's log-probability to the squashed one's."""
        mean, log_std = self.policy(z).chunk(2, -1)
        log_std = self.cfg.log_std_min + 0.5 * (self.cfg.log_std_max - self.cfg.log_std_min) * (torch.tanh(log_std) + 1)
        gaussian_log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        action = torch.tanh(mean + noise * log_std.exp())
        log_prob = gaussian_log_prob - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1)
        scaled_entropy = -log_prob * (gaussian_log_prob * self.action_dim) / (log_prob + 1e-8)
        return action, scaled_entropy

    def q_logits(self, x: torch.Tensor, target: bool = False, dropout_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(seeds, ..., latent + A) -> (seeds, num_q, ..., bins): every member of each seed's ensemble."""
        return (self.target_q if target else self.q)(x.unsqueeze(1).expand(x.shape[0], self.cfg.num_q, *x.shape[1:]),
                                                     dropout_mask)

    def q_value(self, z: torch.Tensor, action: torch.Tensor, pair: torch.Tensor, target: bool = False,
                reduce: str = "min", dropout_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The ensemble members `pair` (seeds, 2) of each seed, decoded; their min (for targets) or mean."""
        logits = self.q_logits(torch.cat([z, self.model_action(action)], -1), target, dropout_mask)
        chosen = logits[torch.arange(len(pair), device=z.device)[:, None], pair]      # (seeds, 2, ..., bins)
        values = symexp(two_hot_decode(F.softmax(chosen, -1), self.bins))
        return values.min(1).values if reduce == "min" else values.mean(1)

    # -- training --------------------------------------------------------------------------------
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        encoder = list(self.encoder.parameters())
        rest = [p for name, p in self.named_parameters()
                if not name.startswith(("encoder.", "policy.", "target_q.")) and p.requires_grad]
        # foreach, not fused: the fused CPU kernel rounds a tensor differently with its length, so a
        # seed would not learn as it does alone
        return {"model": torch.optim.Adam([{"params": encoder, "lr": self.cfg.lr * self.cfg.enc_lr_scale},
                                           {"params": rest}], lr=self.cfg.lr, foreach=True),
                "policy": torch.optim.Adam(self.policy.parameters(), lr=self.cfg.lr, eps=1e-5, foreach=True)}

    def update_noise(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every random number of one update, from each seed's generator."""
        cfg, device = self.cfg, batch["obs"].device
        size, horizon, noise = batch["obs"].shape[1], cfg.horizon, self.noise
        drawn = {"next_action": noise.normal((size, horizon, self.action_dim), device),
                 "target_pair": noise.pairs(cfg.num_q, device),
                 "policy_action": noise.normal((size, horizon + 1, self.action_dim), device),
                 "policy_pair": noise.pairs(cfg.num_q, device)}
        if self.pixels and cfg.shift_pad:
            drawn["next_shift"] = noise.integers(2 * cfg.shift_pad + 1, (size * horizon, 2), device)
            drawn["shift"] = noise.integers(2 * cfg.shift_pad + 1, (size, 2), device)
        if self.training and cfg.dropout:
            drawn["q_dropout"] = noise.dropout_mask(cfg.dropout, (cfg.num_q, size, horizon, cfg.mlp_dim), device)
            drawn["policy_dropout"] = noise.dropout_mask(cfg.dropout, (cfg.num_q, size, horizon + 1, cfg.mlp_dim),
                                                         device)
        return drawn

    def losses(self, batch: dict[str, torch.Tensor],
               noise: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Per seed, (seeds,): the consistency, reward, value (and termination) losses over the
        horizon and their weighted total; also the H+1 latents of the rollout (the policy prior
        trains on them)."""
        cfg, horizon = self.cfg, self.cfg.horizon
        obs, action = batch["obs"], batch["action"][:, :, :horizon]
        reward, done = batch["reward"][:, :, 1:], batch["is_terminal"][:, :, 1:].float()
        with torch.no_grad():
            next_z = self.encode(obs[:, :, 1:], noise.get("next_shift"))
            next_action, _ = self.act(next_z, noise["next_action"])
            td_target = reward + self.discount * (1 - done) * self.q_value(next_z, next_action, noise["target_pair"],
                                                                           target=True)
        z = self.encode(obs[:, :, 0], noise.get("shift"))
        latent_std = z.detach().transpose(1, 2).contiguous().std(-1).mean(-1)
        latents, consistency = [z], 0.0
        weights = cfg.rho ** torch.arange(horizon, dtype=torch.float32, device=obs.device)
        for t in range(horizon):
            z = self.next(z, action[:, :, t])
            consistency = consistency + weights[t] * (z - next_z[:, :, t]).pow(2).mean((1, 2))
            latents.append(z)
        latents = torch.stack(latents, 2)                           # (seeds, B, H+1, latent)
        rolled = latents[:, :, :-1]
        reward_ce = soft_cross_entropy(self.reward_logits(rolled, action), two_hot(symlog(reward), self.bins))
        q_logits = self.q_logits(torch.cat([rolled, action], -1), dropout_mask=noise.get("q_dropout"))
        value_ce = soft_cross_entropy(q_logits, two_hot(symlog(td_target), self.bins).unsqueeze(1))
        # Means over the batch as sums over each seed's whole row: a reduction across rows (the
        # batch axis, here) can round differently with the number of seeds, a row's sum cannot.
        parts = {"consistency": consistency / horizon,
                 "reward": (reward_ce * weights).flatten(1).sum(-1) / (reward_ce.shape[1] * horizon),
                 "value": (value_ce * weights).flatten(1).sum(-1) / (value_ce.shape[2] * horizon * cfg.num_q)}
        total = cfg.consistency_coef * parts["consistency"] + cfg.reward_coef * parts["reward"] + cfg.value_coef * parts["value"]
        if self.termination_head is not None:
            parts["termination"] = F.binary_cross_entropy_with_logits(
                self.termination_head(latents[:, :, 1:]).squeeze(-1), done, reduction="none").mean((1, 2))
            total = total + cfg.termination_coef * parts["termination"]
        parts["latent_std"] = latent_std
        return total, parts, latents

    def update(self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> list[dict[str, float]]:
        """One update of every seed on its own batch (seeds, B, ...); each seed's metrics."""
        noise = self.update_noise(batch)
        torch.compiler.cudagraph_mark_step_begin()   # with CUDA graphs: this update is a new step
        total, parts, latents = self._losses(batch, noise)
        optimizers["model"].zero_grad(set_to_none=True)
        total.sum().backward()      # seeds share no weights: each gets the gradient of its own loss
        # The policy objective's CUDA graph reuses the losses graph's output memory: copy what is read later.
        model_losses = torch.stack([total.detach(), *(value.detach() for value in parts.values())], 1)
        latents = latents.detach().clone()
        grad_norm = clip_grad_norm_per_seed(
            [p for g in optimizers["model"].param_groups for p in g["params"]], self.cfg.grad_clip_norm)
        optimizers["model"].step()
        policy_loss = self.policy_step(latents, noise, optimizers["policy"])
        self.update_target()
        names = ["loss", *parts, "policy", "grad_norm"]
        rows = torch.cat([model_losses, policy_loss[:, None], grad_norm[:, None]], 1).tolist()   # one host sync
        return [dict(zip(names, row)) for row in rows]

    def train_step(self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        """One update of a one-seed model on a batch without the seed axis (the stages' interface)."""
        return self.update(self.single_seed(batch), optimizers)[0]

    def policy_objective(self, latents: torch.Tensor, noise: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per seed, the policy prior's loss on the rollout's latents: Q scaled by its running 5-95
        percentile range, plus the scaled entropy, weighted by rho^t (updates the range in place)."""
        action, scaled_entropy = self.act(latents, noise["policy_action"])
        q = self.q_value(latents, action, noise["policy_pair"], reduce="mean", dropout_mask=noise.get("policy_dropout"))
        with torch.no_grad():
            spread = torch.quantile(q[:, :, 0], torch.tensor([0.05, 0.95], device=q.device), dim=1).diff(dim=0)[0]
            self.q_scale.lerp_(spread.clamp(min=1.0), self.cfg.tau)
        weights = self.cfg.rho ** torch.arange(latents.shape[2], dtype=torch.float32, device=latents.device)
        return -((self.cfg.entropy_coef * scaled_entropy + q / self.q_scale[:, None, None]) * weights).flatten(1).mean(-1)

    def policy_step(self, latents: torch.Tensor, noise: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer) -> torch.Tensor:
        self.q.requires_grad_(False)
        torch.compiler.cudagraph_mark_step_begin()
        loss = self._policy_objective(latents, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        clip_grad_norm_per_seed(list(self.policy.parameters()), self.cfg.grad_clip_norm)
        optimizer.step()
        self.q.requires_grad_(True)
        return loss.detach()

    @torch.no_grad()
    def update_target(self) -> None:
        torch._foreach_lerp_(list(self.target_q.parameters()), list(self.q.parameters()), self.cfg.tau)

    # -- model-quality metrics (one-seed models, batches without the seed axis) ------------------
    @torch.no_grad()
    def open_loop(self, batch: dict[str, torch.Tensor], context: int = 1) -> dict[str, torch.Tensor]:
        """From the latent of frame `context - 1`, roll the dynamics under the true actions and
        compare with the encoder's latents (MSE over latent dims, per horizon step), and the same
        for a baseline that copies the starting latent."""
        batch, start = self.single_seed(batch), context - 1
        z = self.encode(batch["obs"][:, :, start])
        targets = self.encode(batch["obs"][:, :, start + 1:])
        predicted = []
        for t in range(targets.shape[2]):
            z = self.next(z, batch["action"][:, :, start + t])
            predicted.append(z)
        predicted = torch.stack(predicted, 2)
        start_latent = self.encode(batch["obs"][:, :, start]).unsqueeze(2)
        return {"model": (predicted - targets)[0].pow(2).mean((0, 2)),
                "copy_last": (start_latent - targets)[0].pow(2).mean((0, 2))}

    @torch.no_grad()
    def one_step_predictions(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reward aligned with frames: entry t predicts reward[t] from frame t-1 (entry 0 is 0)."""
        batch = self.single_seed(batch)
        z = self.encode(batch["obs"][:, :, :-1])
        predicted = self.predicted_reward(z, batch["action"][:, :, :-1])[0]
        return {"reward": F.pad(predicted, (1, 0))}

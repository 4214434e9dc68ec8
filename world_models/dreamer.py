"""DreamerV3's world model on cached embeddings (or pixels): RSSM, decoder, reward and continue heads.

Layers follow danijar/dreamerv3 (rssm.py, embodied/jax/nets.py, heads.py): every hidden layer is
Linear -> RMSNorm -> SiLU, weights are drawn from a truncated normal with variance 1 / fan-in
(times an output scale: 0 for the reward head, so it starts at the uniform distribution) and
biases start at 0.

The deterministic state h follows the reference's block GRU: the previous h, the stochastic
state and the action (scaled into [-1, 1] by max(1, |a|)) each pass through a layer of their
own; `blocks` groups of h each see their own slice of h and all three of those features, through
block-diagonal layers; the update gate's bias is -1, so h is kept by default. The stochastic
state z is `stoch` categoricals of `classes` classes each, mixed with 1% uniform (unimix) and
sampled with straight-through gradients. The prior p(z_t | h_t) (two hidden layers) is trained
towards the posterior q(z_t | h_t, embed_t) (one hidden layer) with KL balancing: dyn (prior
towards a stopped posterior) and rep (posterior towards a stopped prior), each clipped below at
`free_nats`. Inputs follow DreamerV3's convention: frame t is paired with the action that led to
it (`prev_action`) and the reward received on arriving.

A PVR embedding enters in symlog: through one linear map (`embed_head: linear`, the paper's
frozen PVR + linear mapping) or through the reference's vector encoder (`mlp`: `mlp_layers`
hidden layers). The decoder reconstructs the symlog embedding with the reference's vector
decoder (`mlp_layers` hidden layers). Pixels use a CNN encoder and decoder instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from world_models.errors import WorldModelError
from world_models.math import dreamer_bins, symlog, two_hot_decode, two_hot_log_likelihood
from world_models.optimizers import LaProp


@dataclass(frozen=True)
class DreamerConfig:
    deter: int = 2048
    hidden: int = 256
    stoch: int = 32
    classes: int = 16
    blocks: int = 8                # groups of the block GRU; must divide `deter`
    units: int = 256
    mlp_layers: int = 3            # hidden layers of the vector encoder (embed_head=mlp), decoder, actor and critic
    head_layers: int = 1           # hidden layers of the reward and continue heads
    cnn_depth: int = 16
    embed_head: str = "linear"    # linear or mlp, on the PVR embedding (the paper: linear is enough)
    unimix: float = 0.01
    free_nats: float = 1.0
    dyn_scale: float = 1.0
    rep_scale: float = 0.1
    lr: float = 4e-5
    agc: float = 0.3               # adaptive gradient clipping: |g| <= agc * max(|w|, 1e-3) per tensor
    warmup: int = 1000             # updates over which the learning rate rises linearly from 0
    batch_size: int = 16
    sequence_length: int = 64
    # behaviour: actor-critic trained in imagination (world_models/dreamer_agent.py)
    imag_horizon: int = 15
    return_horizon: float = 333.0  # discount = 1 - 1 / return_horizon
    return_lambda: float = 0.95
    actor_entropy: float = 3e-4
    actor_grad: str = "reinforce"  # reinforce, dynamics, or auto (dynamics for continuous actions only)
    actor_min_std: float = 0.1
    actor_max_std: float = 1.0
    slow_critic_rate: float = 0.02
    slow_critic_reg: float = 1.0
    return_norm_decay: float = 0.99
    repval_scale: float = 0.3      # the critic's loss on replayed states, next to its loss in imagination

    @property
    def frame_stack(self) -> int:
        return 1

    def as_dict(self) -> dict:
        return asdict(self)


# Settings that shape the weights; the rest (learning, imagination, actor) may change between
# offline training and fine-tuning.
ARCHITECTURE = ("deter", "hidden", "stoch", "classes", "blocks", "units", "mlp_layers", "head_layers", "cnn_depth",
                "embed_head")

# `m` is DreamerV3's size12m and `l` its size200m (danijar/dreamerv3 configs.yaml); `s` is a
# quarter of size12m for CPU studies, `xs` is for tests. The reference's lr 4e-5 is for its
# 1M-200M models: an `xs` agent barely learns with it in 12.5k updates, with 3e-4 it meets
# DreamerV3's published cartpole returns at 50k simulator steps (README, dreamer on `state`).
PRESETS = {
    "xs": DreamerConfig(deter=64, hidden=64, stoch=8, classes=8, units=64, cnn_depth=8, lr=3e-4),
    "s": DreamerConfig(deter=512, hidden=128, stoch=32, classes=8, units=128, cnn_depth=8),
    "m": DreamerConfig(),
    "l": DreamerConfig(deter=8192, hidden=1024, classes=64, units=1024, cnn_depth=64),
}


# -- layers ---------------------------------------------------------------------------------------
def _init_weight(weight: torch.Tensor, fan_in: int, scale: float) -> None:
    """DreamerV3's trunc_normal_in: a normal cut at 2 std, rescaled (1.1368) to variance scale^2 / fan_in."""
    with torch.no_grad():
        nn.init.trunc_normal_(weight, std=1.0, a=-2.0, b=2.0)
        weight.mul_(1.1368 * scale / math.sqrt(fan_in))


def linear(in_features: int, out_features: int, outscale: float = 1.0) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    _init_weight(layer.weight, in_features, outscale)
    nn.init.zeros_(layer.bias)
    return layer


def dense(in_features: int, out_features: int) -> nn.Sequential:
    """DreamerV3's hidden layer: Linear -> RMSNorm -> SiLU."""
    return nn.Sequential(linear(in_features, out_features), nn.RMSNorm(out_features, eps=1e-4), nn.SiLU())


def mlp(in_features: int, units: int, layers: int, out_features: int | None = None,
        outscale: float = 1.0) -> nn.Sequential:
    """`layers` hidden layers of `units`, then (with `out_features`) a linear output layer."""
    widths = [in_features] + [units] * layers
    blocks = [dense(a, b) for a, b in zip(widths[:-1], widths[1:])]
    if out_features is not None:
        blocks.append(linear(widths[-1], out_features, outscale))
    return nn.Sequential(*blocks)


class BlockLinear(nn.Module):
    """`blocks` independent linear maps, one per group: (..., blocks, in) -> (..., blocks, out)."""

    def __init__(self, blocks: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(blocks, in_features, out_features))
        _init_weight(self.weight, blocks * in_features, 1.0)   # the reference's fan-in counts every block
        self.bias = nn.Parameter(torch.zeros(blocks, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...gi,gio->...go", x, self.weight) + self.bias

    def with_shared(self, own: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """The layer on each group's input (own_g, shared): (..., blocks, i) and (..., s) with
        i + s = in_features -> (..., blocks * out). The same as forward() on the concatenation,
        without copying `shared` into every group: its part is one dense matmul for all groups."""
        own_features = own.shape[-1]
        own_part = torch.einsum("...gi,gio->...go", own, self.weight[:, :own_features]).flatten(-2)
        shared_weight = self.weight[:, own_features:].transpose(0, 1).flatten(1)   # (s, blocks * out)
        return own_part + F.linear(shared, shared_weight.T, self.bias.flatten())


def scaled_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float in [-0.5, 0.5], in place after the one copy (these are 50 MB per batch)."""
    return pixels.to(torch.float32, copy=True).div_(255.0).sub_(0.5)


class PixelEncoder(nn.Module):
    """64x64 RGB -> flat features: four stride-2 convolutions (64 -> 4 px), each normed + SiLU."""

    def __init__(self, depth: int):
        super().__init__()
        channels = [3, depth, 2 * depth, 4 * depth, 8 * depth]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.GroupNorm(1, c_out), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_features = 8 * depth * 4 * 4

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        lead = pixels.shape[:-3]
        # channels-last: oneDNN's convolutions at these small channel counts run ~1.3x faster
        x = pixels.reshape(-1, *pixels.shape[-3:]).contiguous(memory_format=torch.channels_last)
        return self.net(scaled_pixels(x)).reshape(*lead, -1)


class PixelDecoder(nn.Module):
    """Features -> 64x64 RGB in [-0.5, 0.5], mirroring PixelEncoder."""

    def __init__(self, in_features: int, depth: int):
        super().__init__()
        self.depth = depth
        self.project = nn.Linear(in_features, 8 * depth * 4 * 4)
        channels = [8 * depth, 4 * depth, 2 * depth, depth]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.GroupNorm(1, c_out), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(depth, 3, 4, 2, 1))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        lead = feat.shape[:-1]
        x = self.project(feat).reshape(-1, 8 * self.depth, 4, 4).contiguous(memory_format=torch.channels_last)
        return self.net(x).contiguous().reshape(*lead, 3, 64, 64)


# -- the RSSM -------------------------------------------------------------------------------------
class RSSM(nn.Module):
    def __init__(self, embed_dim: int, action_dim: int, cfg: DreamerConfig):
        super().__init__()
        if cfg.deter % cfg.blocks:
            raise WorldModelError(f"dreamer setting deter ({cfg.deter}) must be a multiple of blocks ({cfg.blocks}); "
                                  f"choose another --set blocks=N")
        self.cfg = cfg
        stoch_flat, group = cfg.stoch * cfg.classes, cfg.deter // cfg.blocks
        self.deter_in = dense(cfg.deter, cfg.hidden)
        self.stoch_in = dense(stoch_flat, cfg.hidden)
        self.action_in = dense(action_dim, cfg.hidden)
        self.gru_hidden = BlockLinear(cfg.blocks, group + 3 * cfg.hidden, group)
        self.gru_norm = nn.RMSNorm(cfg.deter, eps=1e-4)
        self.gru_gates = BlockLinear(cfg.blocks, group, 3 * group)
        self.prior_net = nn.Sequential(dense(cfg.deter, cfg.hidden), dense(cfg.hidden, cfg.hidden),
                                       linear(cfg.hidden, stoch_flat))
        self.post_net = nn.Sequential(dense(cfg.deter + embed_dim, cfg.hidden), linear(cfg.hidden, stoch_flat))

    @property
    def feat_dim(self) -> int:
        return self.cfg.deter + self.cfg.stoch * self.cfg.classes

    def initial(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.gru_gates.weight.device
        return (torch.zeros(batch, self.cfg.deter, device=device),
                torch.zeros(batch, self.cfg.stoch * self.cfg.classes, device=device))

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, stoch*classes) logits -> (B, stoch, classes) log-probabilities with unimix."""
        logits = logits.reshape(*logits.shape[:-1], self.cfg.stoch, self.cfg.classes)
        # F.softmax over a last axis of a few classes is ~5x slower on the CPU than these three ops.
        exp = (logits - logits.amax(-1, keepdim=True).detach()).exp()
        probs = exp / exp.sum(-1, keepdim=True)
        return torch.log((1 - self.cfg.unimix) * probs + self.cfg.unimix / self.cfg.classes)

    @staticmethod
    def sample(log_probs: torch.Tensor) -> torch.Tensor:
        """One-hot sample per categorical with straight-through gradients, flattened."""
        probs = log_probs.exp()
        # Inverse-CDF sampling: the first class whose cumulative probability reaches a uniform draw
        # (torch.multinomial costs several times more on many small distributions).
        uniform = torch.rand(*probs.shape[:-1], 1, device=probs.device, dtype=probs.dtype)
        index = (probs.detach().cumsum(-1) < uniform).sum(-1).clamp(max=probs.shape[-1] - 1)
        one_hot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
        return (one_hot + probs - probs.detach()).flatten(-2)

    def core(self, deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The next deterministic state."""
        action = action / action.abs().clamp(min=1.0).detach()
        shared = torch.cat([self.deter_in(deter), self.stoch_in(stoch), self.action_in(action)], -1)
        x = F.silu(self.gru_norm(self.gru_hidden.with_shared(deter.unflatten(-1, (self.cfg.blocks, -1)), shared)))
        gates = self.gru_gates(x.unflatten(-1, (self.cfg.blocks, -1)))
        reset, cand, update = (gate.flatten(-2) for gate in gates.chunk(3, -1))
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1 - update) * deter

    def prior(self, deter: torch.Tensor) -> torch.Tensor:
        return self.log_probs(self.prior_net(deter))

    def posterior(self, deter: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        return self.log_probs(self.post_net(torch.cat([deter, embed], -1)))

    def img_step(self, deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor):
        deter = self.core(deter, stoch, action)
        return deter, self.prior(deter)

    def obs_step(self, deter: torch.Tensor, stoch: torch.Tensor, prev_action: torch.Tensor, embed: torch.Tensor,
                 is_first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One filtering step: the state, its sampled stochastic part and the posterior."""
        keep = (~is_first).float().unsqueeze(-1)
        deter = self.core(deter * keep, stoch * keep, prev_action * keep)
        post = self.posterior(deter, embed)
        return deter, self.sample(post), post

    def observe(self, embed: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor) -> dict[str, torch.Tensor]:
        """Filter a (B, T) sequence; the priors of all steps come from the states at the end."""
        deter, stoch = self.initial(embed.shape[0])
        out: dict[str, list[torch.Tensor]] = {"deter": [], "stoch": [], "post": []}
        for t in range(embed.shape[1]):
            deter, stoch, post = self.obs_step(deter, stoch, prev_action[:, t], embed[:, t], is_first[:, t])
            for key, value in zip(out, (deter, stoch, post)):
                out[key].append(value)
        states = {key: torch.stack(values, 1) for key, values in out.items()}
        return states | {"prior": self.prior(states["deter"])}

    def imagine(self, deter: torch.Tensor, stoch: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Open-loop rollout of the prior under (B, K) given actions."""
        out: dict[str, list[torch.Tensor]] = {"deter": [], "stoch": [], "prior": []}
        for t in range(actions.shape[1]):
            deter, prior = self.img_step(deter, stoch, actions[:, t])
            stoch = self.sample(prior)
            for key, value in zip(out, (deter, stoch, prior)):
                out[key].append(value)
        return {key: torch.stack(values, 1) for key, values in out.items()}


def categorical_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the categoricals: (..., stoch, classes) -> (...)."""
    return (log_p.exp() * (log_p - log_q)).sum((-2, -1))


# -- the world model ------------------------------------------------------------------------------
class DreamerWorldModel(nn.Module):
    def __init__(self, feature: str, feature_shape: tuple[int, ...], action_dim: int, cfg: DreamerConfig,
                 discrete_actions: bool = False):
        super().__init__()
        self.cfg = cfg
        self.action_dim, self.discrete_actions = action_dim, discrete_actions
        self.pixels = feature == "pixels"
        if self.pixels:
            self.encoder = PixelEncoder(cfg.cnn_depth)
            embed_dim = self.encoder.out_features
        elif cfg.embed_head == "linear":
            self.encoder, embed_dim = linear(feature_shape[0], cfg.units), cfg.units
        else:
            self.encoder, embed_dim = mlp(feature_shape[0], cfg.units, cfg.mlp_layers), cfg.units
        self.rssm = RSSM(embed_dim, action_dim, cfg)
        feat = self.rssm.feat_dim
        if self.pixels:
            self.decoder = PixelDecoder(feat, cfg.cnn_depth)
        else:
            self.decoder = mlp(feat, cfg.units, cfg.mlp_layers, feature_shape[0])
        self.register_buffer("bins", dreamer_bins())
        self.reward_head = mlp(feat, cfg.units, cfg.head_layers, len(self.bins), outscale=0.0)
        self.continue_head = mlp(feat, cfg.units, cfg.head_layers, 1)

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(obs if self.pixels else symlog(obs))

    def reconstruction_target(self, obs: torch.Tensor) -> torch.Tensor:
        return scaled_pixels(obs) if self.pixels else symlog(obs)

    @staticmethod
    def features(deter: torch.Tensor, stoch: torch.Tensor) -> torch.Tensor:
        return torch.cat([deter, stoch], -1)

    def predicted_reward(self, feat: torch.Tensor) -> torch.Tensor:
        return two_hot_decode(F.softmax(self.reward_head(feat), -1), self.bins)

    def predicted_continue(self, feat: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.continue_head(feat).squeeze(-1))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
        """Total loss, its parts, and the filtered states with their features (the starts of
        imagination), still attached to the graph."""
        is_first = batch["is_first"].clone()
        is_first[:, 0] = True   # every window starts from the initial state
        states = self.rssm.observe(self.embed(batch["obs"]), batch["prev_action"], is_first)
        feat = self.features(states["deter"], states["stoch"])
        # summed over each frame's values, averaged over frames; one fused kernel each way
        reconstruction = F.mse_loss(self.decoder(feat), self.reconstruction_target(batch["obs"]), reduction="sum")
        reconstruction = reconstruction / feat.shape[:-1].numel()
        reward = -two_hot_log_likelihood(F.log_softmax(self.reward_head(feat), -1), batch["reward"], self.bins).mean()
        cont = F.binary_cross_entropy_with_logits(self.continue_head(feat).squeeze(-1),
                                                  (~batch["is_terminal"]).float())
        post, prior = states["post"], states["prior"]
        dyn = categorical_kl(post.detach(), prior).clamp(min=self.cfg.free_nats).mean()
        rep = categorical_kl(post, prior.detach()).clamp(min=self.cfg.free_nats).mean()
        total = reconstruction + reward + cont + self.cfg.dyn_scale * dyn + self.cfg.rep_scale * rep
        metrics = {"loss": total, "reconstruction": reconstruction, "reward": reward, "continue": cont,
                   "kl_dyn": dyn, "kl_rep": rep}
        return total, {k: float(v.detach()) for k, v in metrics.items()}, states | {"feat": feat}

    def compile(self, mode: str = "default") -> None:
        """The RSSM's per-step networks (block GRU core, prior, posterior) through torch.compile
        (inductor), each called once per filtering and imagined step; sampling stays eager, so
        every random number is eager's.

        The whole update unrolled (64 filtering + 15 imagined steps and their backward) had not
        finished compiling after 15 min on a 2-core CPU; these compile in ~75 s there. No CUDA
        graphs (`reduce-overhead`): each graph is replayed once per time step inside one backward
        pass, and every replay would overwrite the outputs of the one before."""
        options = {"mode": "default" if mode == "reduce-overhead" else mode, "fullgraph": True, "dynamic": False}
        rssm = self.rssm
        rssm.core, rssm.prior, rssm.posterior = (torch.compile(step, **options)
                                                 for step in (rssm.core, rssm.prior, rssm.posterior))

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": LaProp(self.parameters(), lr=self.cfg.lr, agc=self.cfg.agc, warmup=self.cfg.warmup)}

    def train_step(self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        total, metrics, _ = self.loss(batch)
        optimizers["model"].zero_grad(set_to_none=True)
        total.backward()
        optimizers["model"].step()
        return metrics

    @torch.no_grad()
    def open_loop(self, batch: dict[str, torch.Tensor], context: int) -> dict[str, torch.Tensor]:
        """Observe `context` frames, then predict the rest from actions alone.

        Returns per horizon step k = 1..K: the symmetric KL between the open-loop prior and the
        posterior that saw the frames (the paper's DreamerV3 prediction error), and the same for a
        baseline that copies the last observed posterior.
        """
        is_first = batch["is_first"].clone()
        is_first[:, 0] = True
        embed = self.embed(batch["obs"])
        filtered = self.rssm.observe(embed, batch["prev_action"], is_first)
        last = context - 1
        rollout = self.rssm.imagine(filtered["deter"][:, last], filtered["stoch"][:, last],
                                    batch["prev_action"][:, context:])
        post = filtered["post"][:, context:]
        copied = filtered["post"][:, last:last + 1].expand_as(post)
        return {"model": symmetric_kl(post, rollout["prior"]), "copy_last": symmetric_kl(post, copied)}

    @torch.no_grad()
    def one_step_predictions(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reward predicted from each filtered state, and the reconstruction error per frame
        (squared error in the decoder's target space, mean over elements)."""
        is_first = batch["is_first"].clone()
        is_first[:, 0] = True
        states = self.rssm.observe(self.embed(batch["obs"]), batch["prev_action"], is_first)
        feat = self.features(states["deter"], states["stoch"])
        error = (self.decoder(feat) - self.reconstruction_target(batch["obs"])).pow(2).flatten(2).mean(-1)
        return {"reward": self.predicted_reward(feat), "reconstruction": error}


def symmetric_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Mean of forward and backward KL, averaged over the batch: (B, K, stoch, classes) -> (K,)."""
    return (0.5 * (categorical_kl(log_p, log_q) + categorical_kl(log_q, log_p))).mean(0)

"""DreamerV3's world model on cached embeddings (or pixels): RSSM, decoder, reward and continue heads.

The deterministic state h follows a GRU; the stochastic state z is `stoch` categoricals of
`classes` classes each, mixed with 1% uniform (unimix) and sampled with straight-through
gradients. The prior p(z_t | h_t) is trained towards the posterior q(z_t | h_t, embed_t) with
KL balancing: dyn (prior towards a stopped posterior) and rep (posterior towards a stopped
prior), each clipped below at `free_nats`. Inputs follow DreamerV3's convention: frame t is
paired with the action that led to it (`prev_action`) and the reward received on arriving.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from world_models.layers import NormedLinear, mlp
from world_models.math import dreamer_bins, soft_cross_entropy, symlog, two_hot, two_hot_decode


@dataclass(frozen=True)
class DreamerConfig:
    deter: int = 2048
    hidden: int = 256
    stoch: int = 32
    classes: int = 16
    units: int = 256
    head_layers: int = 1
    cnn_depth: int = 16
    embed_head: str = "linear"    # linear or mlp, on the PVR embedding (the paper: linear is enough)
    unimix: float = 0.01
    free_nats: float = 1.0
    dyn_scale: float = 1.0
    rep_scale: float = 0.1
    lr: float = 4e-5
    agc: float = 0.3               # adaptive gradient clipping: |g| <= agc * max(|w|, 1e-3) per tensor
    batch_size: int = 16
    sequence_length: int = 64
    # behaviour: actor-critic trained in imagination (world_models/dreamer_agent.py)
    imag_horizon: int = 15
    return_horizon: float = 333.0  # discount = 1 - 1 / return_horizon
    return_lambda: float = 0.95
    actor_entropy: float = 3e-4
    actor_grad: str = "auto"       # auto: dynamics for continuous actions, reinforce for discrete ones
    actor_min_std: float = 0.1
    actor_max_std: float = 1.0
    slow_critic_rate: float = 0.02
    slow_critic_reg: float = 1.0
    return_norm_decay: float = 0.99

    @property
    def frame_stack(self) -> int:
        return 1

    def as_dict(self) -> dict:
        return asdict(self)


# Settings that shape the weights; the rest (learning, imagination, actor) may change between
# offline training and fine-tuning.
ARCHITECTURE = ("deter", "hidden", "stoch", "classes", "units", "head_layers", "cnn_depth", "embed_head")

# `m` is DreamerV3's size12m and `l` its size200m (danijar/dreamerv3 configs.yaml); `s` is a
# quarter of size12m for CPU studies, `xs` is for tests.
PRESETS = {
    "xs": DreamerConfig(deter=64, hidden=64, stoch=8, classes=8, units=64, cnn_depth=8),
    "s": DreamerConfig(deter=512, hidden=128, stoch=32, classes=8, units=128, cnn_depth=8),
    "m": DreamerConfig(),
    "l": DreamerConfig(deter=8192, hidden=1024, classes=64, units=1024, cnn_depth=64),
}



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
        x = pixels.reshape(-1, *pixels.shape[-3:]).float() / 255.0 - 0.5
        return self.net(x).reshape(*lead, -1)


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
        x = self.project(feat).reshape(-1, 8 * self.depth, 4, 4)
        return self.net(x).reshape(*lead, 3, 64, 64)


class RSSM(nn.Module):
    def __init__(self, embed_dim: int, action_dim: int, cfg: DreamerConfig):
        super().__init__()
        self.cfg = cfg
        stoch_flat = cfg.stoch * cfg.classes
        self.img_in = NormedLinear(stoch_flat + action_dim, cfg.hidden, nn.SiLU())
        self.gru = nn.GRUCell(cfg.hidden, cfg.deter)
        self.prior_net = nn.Sequential(NormedLinear(cfg.deter, cfg.hidden, nn.SiLU()), nn.Linear(cfg.hidden, stoch_flat))
        self.post_net = nn.Sequential(NormedLinear(cfg.deter + embed_dim, cfg.hidden, nn.SiLU()),
                                      nn.Linear(cfg.hidden, stoch_flat))

    @property
    def feat_dim(self) -> int:
        return self.cfg.deter + self.cfg.stoch * self.cfg.classes

    def initial(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.gru.weight_hh.device
        return (torch.zeros(batch, self.cfg.deter, device=device),
                torch.zeros(batch, self.cfg.stoch * self.cfg.classes, device=device))

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, stoch*classes) logits -> (B, stoch, classes) log-probabilities with unimix."""
        probs = F.softmax(logits.reshape(*logits.shape[:-1], self.cfg.stoch, self.cfg.classes), -1)
        return torch.log((1 - self.cfg.unimix) * probs + self.cfg.unimix / self.cfg.classes)

    @staticmethod
    def sample(log_probs: torch.Tensor) -> torch.Tensor:
        """One-hot sample per categorical with straight-through gradients, flattened."""
        probs = log_probs.exp()
        index = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])
        one_hot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
        return (one_hot + probs - probs.detach()).flatten(-2)

    def img_step(self, deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor):
        deter = self.gru(self.img_in(torch.cat([stoch, action], -1)), deter)
        return deter, self.log_probs(self.prior_net(deter))

    def observe(self, embed: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor,
                state: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Filter a (B, T) sequence: at each step the prior from the past, then the posterior."""
        batch, steps = embed.shape[:2]
        deter, stoch = state if state is not None else self.initial(batch)
        out: dict[str, list[torch.Tensor]] = {"deter": [], "stoch": [], "post": [], "prior": []}
        for t in range(steps):
            keep = (~is_first[:, t]).float().unsqueeze(-1)
            deter, stoch, action = deter * keep, stoch * keep, prev_action[:, t] * keep
            deter, prior = self.img_step(deter, stoch, action)
            post = self.log_probs(self.post_net(torch.cat([deter, embed[:, t]], -1)))
            stoch = self.sample(post)
            for key, value in zip(out, (deter, stoch, post, prior)):
                out[key].append(value)
        return {key: torch.stack(values, 1) for key, values in out.items()}

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
            self.encoder, embed_dim = nn.Linear(feature_shape[0], cfg.units), cfg.units
        else:
            self.encoder = mlp(feature_shape[0], [cfg.units] * cfg.head_layers, cfg.units)
            embed_dim = cfg.units
        self.rssm = RSSM(embed_dim, action_dim, cfg)
        feat = self.rssm.feat_dim
        if self.pixels:
            self.decoder = PixelDecoder(feat, cfg.cnn_depth)
        else:
            self.decoder = mlp(feat, [cfg.units] * cfg.head_layers, feature_shape[0])
        self.register_buffer("bins", dreamer_bins())
        self.reward_head = mlp(feat, [cfg.units] * cfg.head_layers, len(self.bins))
        self.continue_head = mlp(feat, [cfg.units] * cfg.head_layers, 1)
        # Zero output weights: the first reward predictions are 0 rather than random large values.
        nn.init.zeros_(self.reward_head[-1].weight)
        nn.init.zeros_(self.reward_head[-1].bias)

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(obs if self.pixels else symlog(obs))

    def reconstruction_target(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.float() / 255.0 - 0.5 if self.pixels else symlog(obs)

    @staticmethod
    def features(deter: torch.Tensor, stoch: torch.Tensor) -> torch.Tensor:
        return torch.cat([deter, stoch], -1)

    def predicted_reward(self, feat: torch.Tensor) -> torch.Tensor:
        return two_hot_decode(F.softmax(self.reward_head(feat), -1), self.bins)

    def predicted_continue(self, feat: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.continue_head(feat).squeeze(-1))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
        """Total loss, its parts, and the filtered states (the starts of imagination)."""
        is_first = batch["is_first"].clone()
        is_first[:, 0] = True   # every window starts from the initial state
        states = self.rssm.observe(self.embed(batch["obs"]), batch["prev_action"], is_first)
        feat = self.features(states["deter"], states["stoch"])
        reconstruction = self.decoder(feat) - self.reconstruction_target(batch["obs"])
        reconstruction = reconstruction.pow(2).flatten(2).sum(-1).mean()
        reward = soft_cross_entropy(self.reward_head(feat), two_hot(batch["reward"], self.bins)).mean()
        cont = F.binary_cross_entropy_with_logits(self.continue_head(feat).squeeze(-1),
                                                  (~batch["is_terminal"]).float())
        post, prior = states["post"], states["prior"]
        dyn = categorical_kl(post.detach(), prior).clamp(min=self.cfg.free_nats).mean()
        rep = categorical_kl(post, prior.detach()).clamp(min=self.cfg.free_nats).mean()
        total = reconstruction + reward + cont + self.cfg.dyn_scale * dyn + self.cfg.rep_scale * rep
        metrics = {"loss": total, "reconstruction": reconstruction, "reward": reward, "continue": cont,
                   "kl_dyn": dyn, "kl_rep": rep}
        return total, {k: float(v.detach()) for k, v in metrics.items()}, states

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.parameters(), lr=self.cfg.lr, eps=1e-8)}

    def train_step(self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        return self.update(batch, optimizers)[0]

    def update(self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer]):
        """One gradient step; returns the metrics and the filtered states, detached."""
        total, metrics, states = self.loss(batch)
        optimizers["model"].zero_grad(set_to_none=True)
        total.backward()
        adaptive_gradient_clip(self.parameters(), self.cfg.agc)
        optimizers["model"].step()
        return metrics, {key: value.detach() for key, value in states.items()}

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


def adaptive_gradient_clip(parameters, ratio: float, eps: float = 1e-3) -> None:
    """Scale each tensor's gradient so its norm is at most `ratio` times the tensor's norm."""
    for p in parameters:
        if p.grad is None:
            continue
        limit = ratio * p.detach().norm().clamp(min=eps)
        # min(1, limit / norm) as a tensor: a Python `if` on it would wait for the GPU once per tensor
        p.grad.mul_((limit / p.grad.norm().clamp(min=1e-12)).clamp(max=1.0))

"""Small layers shared by the world models: LayerNorm MLP blocks and vectorised ensembles of them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class NormedLinear(nn.Sequential):
    """Linear -> LayerNorm -> activation (Mish by default, as TD-MPC2), with optional dropout."""

    def __init__(self, in_features: int, out_features: int, activation: nn.Module | None = None,
                 dropout: float = 0.0):
        layers = [nn.Linear(in_features, out_features)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.LayerNorm(out_features), activation or nn.Mish()]
        super().__init__(*layers)


def mlp(in_features: int, hidden: list[int], out_features: int, output_activation: nn.Module | None = None,
        dropout: float = 0.0) -> nn.Sequential:
    """NormedLinear blocks of widths `hidden`, then a plain Linear; or, with `output_activation`
    (TD-MPC2's SimNorm), a last NormedLinear with that activation: the LayerNorm keeps SimNorm's
    logits at unit scale, so its groups do not saturate into one-hots."""
    widths = [in_features, *hidden]
    blocks: list[nn.Module] = [NormedLinear(a, b, dropout=dropout if i == 0 else 0.0)
                               for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]
    if output_activation is None:
        blocks.append(nn.Linear(widths[-1], out_features))
    else:
        blocks.append(NormedLinear(widths[-1], out_features, output_activation))
    return nn.Sequential(*blocks)


class EnsembleLinear(nn.Module):
    """`count` independent linear layers in one batched matmul: (count, N, in) -> (count, N, out).
    Initialised as `nn.Linear` initialises each of them."""

    def __init__(self, count: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(count, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(count, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    def __init__(self, count: int, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(count, 1, features))
        self.bias = nn.Parameter(torch.zeros(count, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class EnsembleMLP(nn.Module):
    """`count` independently initialised copies of `mlp(in, hidden, out)`, evaluated together on a
    shared input (as TD-MPC2 vectorises its Q-functions): (..., in) -> (count, ..., out)."""

    def __init__(self, count: int, in_features: int, hidden: list[int], out_features: int, dropout: float = 0.0):
        super().__init__()
        self.count = count
        widths = [in_features, *hidden]
        blocks: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            blocks.append(EnsembleLinear(count, a, b))
            if dropout and i == 0:
                blocks.append(nn.Dropout(dropout))
            blocks += [EnsembleLayerNorm(count, b), nn.Mish()]
        self.hidden = nn.Sequential(*blocks)
        self.output = EnsembleLinear(count, widths[-1], out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(1, -1, x.shape[-1]).expand(self.count, -1, -1)
        return self.output(self.hidden(x)).reshape(self.count, *lead, -1)

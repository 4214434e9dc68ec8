"""Small layers shared by the world models: LayerNorm MLP blocks and ensembles."""

from __future__ import annotations

from typing import Callable

import torch
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
    """NormedLinear blocks of widths `hidden`, then a plain Linear (and `output_activation`)."""
    widths = [in_features, *hidden]
    blocks: list[nn.Module] = [NormedLinear(a, b, dropout=dropout if i == 0 else 0.0)
                               for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]
    blocks.append(nn.Linear(widths[-1], out_features))
    if output_activation is not None:
        blocks.append(output_activation)
    return nn.Sequential(*blocks)


class Ensemble(nn.Module):
    """`count` independently initialised copies of a module; outputs stacked on a new first axis."""

    def __init__(self, make: Callable[[], nn.Module], count: int):
        super().__init__()
        self.members = nn.ModuleList(make() for _ in range(count))

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(*args) for member in self.members])

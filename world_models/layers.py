"""Stacked layers: many independent copies of a layer evaluated in one batched kernel.

Every weight has leading `stack` axes, e.g. (seeds,) for a network each seed has its own copy
of, or (seeds, num_q) for TD-MPC2's Q-ensemble within each seed, and every input carries the
same leading axes: (*stack, ..., in) -> (*stack, ..., out). Copy i of a stacked layer computes
what the plain layer with copy i's weights computes, whatever the other copies hold, so a seed
trained beside others learns as it does alone. Initialisation is the caller's (each seed draws
from its own generator).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def flatten_stack(x: torch.Tensor, stack: tuple[int, ...]) -> torch.Tensor:
    """(*stack, ..., features) -> (prod(stack), N, features)."""
    return x.reshape(math.prod(stack), -1, x.shape[-1])


class StackedLinear(nn.Module):
    def __init__(self, stack: tuple[int, ...], in_features: int, out_features: int):
        super().__init__()
        self.stack = tuple(stack)
        self.weight = nn.Parameter(torch.empty(*self.stack, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(*self.stack, 1, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        copies, flat = math.prod(self.stack), flatten_stack(x, self.stack)
        bias, weight = self.bias.reshape(copies, 1, -1), self.weight.reshape(copies, *self.weight.shape[-2:])
        if weight.shape[-1] == 1:
            # A batched matrix-vector product (and its backward) rounds differently with the
            # number of copies; one product per copy does not.
            out = torch.stack([torch.addmm(bias[i], flat[i], weight[i]) for i in range(copies)])
        else:
            out = torch.baddbmm(bias, flat, weight)
        return out.reshape(*x.shape[:-1], out.shape[-1])


class StackedLayerNorm(nn.Module):
    def __init__(self, stack: tuple[int, ...], features: int):
        super().__init__()
        self.stack = tuple(stack)
        self.weight = nn.Parameter(torch.ones(*self.stack, 1, features))
        self.bias = nn.Parameter(torch.zeros(*self.stack, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = flatten_stack(x, self.stack)
        copies = flat.shape[0]
        out = torch.addcmul(self.bias.reshape(copies, 1, -1), F.layer_norm(flat, flat.shape[-1:]),
                            self.weight.reshape(copies, 1, -1))
        return out.reshape(x.shape)


class StackedMLP(nn.Module):
    """TD-MPC2's MLP, stacked: Linear -> (dropout on the first) -> LayerNorm -> Mish blocks of widths
    `hidden`, then a plain Linear; or, with `output_activation` (SimNorm), a last Linear ->
    LayerNorm -> that activation: the LayerNorm keeps SimNorm's logits at unit scale, so its groups
    do not saturate into one-hots.

    Dropout takes its mask from the caller (`dropout_mask`, already scaled by 1 / (1 - p)), drawn
    from each seed's own generator."""

    def __init__(self, stack: tuple[int, ...], in_features: int, hidden: list[int], out_features: int,
                 output_activation: nn.Module | None = None):
        super().__init__()
        widths = [in_features, *hidden, out_features]
        self.linears = nn.ModuleList(StackedLinear(stack, a, b) for a, b in zip(widths[:-1], widths[1:]))
        normed = hidden + ([out_features] if output_activation is not None else [])
        self.norms = nn.ModuleList(StackedLayerNorm(stack, width) for width in normed)
        self.output_activation = output_activation

    def forward(self, x: torch.Tensor, dropout_mask: torch.Tensor | None = None) -> torch.Tensor:
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if i == 0 and dropout_mask is not None:
                x = x * dropout_mask
            if i < len(self.linears) - 1:
                x = F.mish(self.norms[i](x))
        if self.output_activation is not None:
            x = self.output_activation(self.norms[-1](x))
        return x


class StackedConv2d(nn.Module):
    """A 2-d convolution per seed: (seeds, N, C, H, W) -> (seeds, N, C', H', W'), one convolution
    call per seed (a grouped convolution would change the floating-point result with the seed count)."""

    def __init__(self, seeds: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(seeds, out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(seeds, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([F.conv2d(x[k], self.weight[k], self.bias[k], self.stride) for k in range(len(x))])

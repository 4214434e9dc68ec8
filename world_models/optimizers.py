"""Optimisers and their per-seed parts: DreamerV3's LaProp (danijar/dreamerv3 embodied/jax/opt.py) as
a torch.optim.Optimizer, gradient clipping per seed, and one seed's slice of a stacked optimiser state."""

from __future__ import annotations

import torch


class LaProp(torch.optim.Optimizer):
    """Adaptive gradient clipping, then LaProp, with a linear learning-rate warm-up.

    Per tensor: the gradient is scaled down so its norm is at most `agc` times the tensor's norm
    (at least `agc_floor`); divided by the root of its bias-corrected second moment (RMSProp);
    then a bias-corrected momentum of that normalised gradient is the step (LaProp: momentum after
    the normalisation, where Adam normalises the momentum). The learning rate rises linearly from
    0 at the first update to `lr` after `warmup` updates (optax.linear_schedule, as the reference
    joins it to a constant one). The update count lives in each tensor's state, so a resumed run
    continues the warm-up where it stopped.
    """

    def __init__(self, params, lr: float = 4e-5, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-20,
                 agc: float = 0.3, agc_floor: float = 1e-3, warmup: int = 1000):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, agc=agc, agc_floor=agc_floor, warmup=warmup))

    @torch.no_grad()
    def step(self, closure=None):
        # One foreach kernel per operation over all tensors of a group, not one per tensor: a
        # small model has ~80 tensors, and per-tensor Python loops were most of its update's ops.
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for param in params:
                if not self.state[param]:
                    self.state[param].update(step=0, exp_avg=torch.zeros_like(param),
                                             exp_avg_sq=torch.zeros_like(param))
            states = [self.state[p] for p in params]
            grads = [p.grad for p in params]
            if group["agc"]:
                limits = torch._foreach_clamp_min(torch._foreach_norm(params), group["agc_floor"])
                norms = torch._foreach_clamp_min(torch._foreach_norm(grads), 1e-30)
                # min(1, limit / norm) as tensors: a Python `if` on them would wait for the GPU per tensor
                factors = torch._foreach_clamp_max(torch._foreach_div(torch._foreach_mul(limits, group["agc"]), norms), 1.0)
                grads = torch._foreach_mul(grads, factors)
            for state in states:
                state["step"] += 1
            steps = [state["step"] for state in states]
            exp_avg_sq = [state["exp_avg_sq"] for state in states]
            exp_avg = [state["exp_avg"] for state in states]
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
            rms = torch._foreach_div(exp_avg_sq, [1 - beta2 ** step for step in steps])
            torch._foreach_sqrt_(rms)
            torch._foreach_add_(rms, group["eps"])
            torch._foreach_mul_(exp_avg, beta1)
            torch._foreach_add_(exp_avg, torch._foreach_div(grads, rms), alpha=1 - beta1)
            rates = [-group["lr"] * (min(1.0, (step - 1) / group["warmup"]) if group["warmup"] else 1.0)
                     / (1 - beta1 ** step) for step in steps]
            torch._foreach_add_(params, torch._foreach_mul(exp_avg, rates))


@torch.no_grad()
def clip_grad_norm_per_seed(parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` for stacked weights: the norm is taken over each seed's
    slice (the leading axis) of all the gradients and each seed's gradients are scaled by their
    own factor. Returns the norms, (seeds,)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    seeds = grads[0].shape[0]
    # Reduced along rows, one row per seed: a reduction down the columns of a (n, seeds) tensor
    # rounds differently with the number of seeds.
    norms = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.reshape(seeds, -1), dim=1) for g in grads], dim=1), dim=1)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(seeds, *[1] * (g.dim() - 1)))
    return norms


def optimizer_state_of_seed(state: dict, k: int) -> dict:
    """A stacked-weights optimiser's state dict as a one-seed model's optimiser would hold it:
    slice k of every per-parameter tensor with a seed axis (0-d counters such as Adam's `step` are
    shared by seeds that update in lockstep)."""
    return {"state": {index: {key: value[k:k + 1].clone() if torch.is_tensor(value) and value.dim() else value
                              for key, value in entry.items()} for index, entry in state["state"].items()},
            "param_groups": state["param_groups"]}


def stacked_optimizer_state(states: list[dict]) -> dict:
    """The inverse of `optimizer_state_of_seed`: one-seed states, concatenated along the seed axis."""
    first = states[0]
    return {"state": {index: {key: torch.cat([s["state"][index][key] for s in states])
                              if torch.is_tensor(value) and value.dim() else value for key, value in entry.items()}
                      for index, entry in first["state"].items()},
            "param_groups": first["param_groups"]}

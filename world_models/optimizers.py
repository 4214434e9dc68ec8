"""DreamerV3's optimiser (danijar/dreamerv3 embodied/jax/opt.py) as a torch.optim.Optimizer."""

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
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
                grad = param.grad
                if group["agc"]:
                    limit = group["agc"] * torch.linalg.vector_norm(param).clamp(min=group["agc_floor"])
                    # min(1, limit / norm) as a tensor: a Python `if` on it would wait for the GPU per tensor
                    grad = grad * (limit / torch.linalg.vector_norm(grad).clamp(min=1e-30)).clamp(max=1.0)
                state["step"] += 1
                step = state["step"]
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                rms = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
                state["exp_avg"].mul_(beta1).add_(grad / rms, alpha=1 - beta1)
                ramp = min(1.0, (step - 1) / group["warmup"]) if group["warmup"] else 1.0
                param.add_(state["exp_avg"], alpha=-group["lr"] * ramp / (1 - beta1 ** step))

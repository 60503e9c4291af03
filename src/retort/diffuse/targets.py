"""Velocity targets of rectified flow (x_sigma = (1 - sigma) x0 + sigma eps, sigma = 1 is noise):
the ordinary flow-matching target from clean data, and Phased DMD's unbiased *subinterval* target,
which needs only samples x_s at an intermediate level sigma_s (what a phase's generator produces),
never clean data.

Phased DMD (Fan et al., arXiv 2510.27684, the subinterval target): from x_s, noise to
sigma_t > sigma_s with x_t = a x_s + b eps, a = (1 - sigma_t) / (1 - sigma_s),
b = sqrt(sigma_t^2 - a^2 sigma_s^2); then

    v_target = -x_s / (1 - sigma_s) + [sigma_t + (1 - sigma_t) sigma_s^2 / (1 - sigma_s)^2] / b * eps

has E[v_target | x_t] = the marginal velocity E[eps_total - x0 | x_t], while the naive eps - x_s
does not (the spec's check: 0.013, Monte Carlo noise, against 0.257).

`subinterval_denoiser_target` is the same idea in EDM's convention, which `phased_dmd` trains with.
"""

from __future__ import annotations

import math

import torch


def subinterval_noise(x_s: torch.Tensor, sigma_s: float, sigma_t: float, eps: torch.Tensor) -> torch.Tensor:
    """x_t from x_s: the forward process continued from sigma_s to sigma_t (> sigma_s)."""
    a, b = subinterval_coeffs(sigma_s, sigma_t)
    return a * x_s + b * eps


def subinterval_coeffs(sigma_s: float, sigma_t: float) -> tuple[float, float]:
    if not 0 <= sigma_s < sigma_t <= 1:
        raise ValueError(f"need 0 <= sigma_s < sigma_t <= 1, got {sigma_s}, {sigma_t}")
    a = (1 - sigma_t) / (1 - sigma_s)
    return a, math.sqrt(sigma_t**2 - a**2 * sigma_s**2)


def subinterval_velocity_target(x_s: torch.Tensor, eps: torch.Tensor, sigma_s: float, sigma_t: float) -> torch.Tensor:
    """Phased DMD's unbiased target for the velocity at x_t = subinterval_noise(x_s, ..., eps)."""
    _, b = subinterval_coeffs(sigma_s, sigma_t)
    return -x_s / (1 - sigma_s) + (sigma_t + (1 - sigma_t) * sigma_s**2 / (1 - sigma_s) ** 2) / b * eps


# ---------------------------------------------------------------------------- the same in EDM's convention
def subinterval_denoiser_target(x_s: torch.Tensor, x_t: torch.Tensor, sigma_s, sigma_t) -> torch.Tensor:
    """Phased DMD's unbiased target in EDM's variance-exploding convention (x_t = x_s + sqrt(sigma_t^2
    - sigma_s^2) eps): denoising score matching from x_s, E[(x_s - x_t) / (sigma_t^2 - sigma_s^2) | x_t]
    = grad log p_t(x_t) for any chain x0 -> x_s -> x_t, so the denoiser target
    x_t + sigma_t^2 (x_s - x_t) / (sigma_t^2 - sigma_s^2) has E[. | x_t] = E[x0 | x_t] without x0.
    `sigma_s`, `sigma_t`: floats or tensors broadcastable to the rows."""
    s2 = torch.as_tensor(sigma_s, dtype=x_t.dtype, device=x_t.device) ** 2
    t2 = torch.as_tensor(sigma_t, dtype=x_t.dtype, device=x_t.device) ** 2
    return x_t + t2 * (x_s - x_t) / (t2 - s2)

"""2-D Gaussian mixtures with an exact teacher: sampling, and the closed-form denoiser, score and
velocity at every noise level (the closed form of a Gaussian mixture's score under Gaussian noise), so that distillation error is
measured apart from teacher error.

Noising conventions (stated, because tools differ):
- EDM / variance-exploding: x_sigma = x0 + sigma * n. Then p_sigma = sum_k pi_k N(mu_k, (s_k^2 +
  sigma^2) I), and the x0-prediction is D(x, sigma) = sum_k w_k(x) (sigma^2 mu_k + s_k^2 x) /
  (s_k^2 + sigma^2) with w_k the posterior of component k; the score is (D - x) / sigma^2.
- Rectified flow: x_t = (1 - t) x0 + t eps, t in [0, 1]. The velocity is v = E[eps - x0 | x_t]
  (the direction from data to noise).

Mixtures: `ring` (K=8 modes on a circle of radius 4, std 0.15, uniform or 0.6^k-skewed weights),
`grid` (25 modes at (2i, 2j), i, j in -2..2, std 0.15), `swiss` (a swiss roll as 100 small
components along the spiral, so it too has an exact teacher) and `classes` (10 classes, each a
3-component mixture: every conditional is multimodal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Mixture:
    means: torch.Tensor    # (K, D): 2-D points, or a sequence's frames flattened
    stds: torch.Tensor     # (K,) isotropic
    weights: torch.Tensor  # (K,) summing to 1
    labels: torch.Tensor | None = None  # (K,) the class of each component (class-conditional mixtures)

    @property
    def K(self) -> int:
        return len(self.weights)

    def condition(self, label: int) -> "Mixture":
        """The mixture of one class's components (renormalised)."""
        if self.labels is None:
            raise ValueError("this mixture has no classes")
        m = self.labels == label
        return Mixture(self.means[m], self.stds[m], self.weights[m] / self.weights[m].sum())

    def sample(self, n: int, generator: torch.Generator | None = None, return_component: bool = False):
        k = torch.multinomial(self.weights.double(), n, replacement=True, generator=generator)
        x = self.means[k] + self.stds[k, None] * torch.randn(n, self.means.shape[1], generator=generator,
                                                             dtype=self.means.dtype)
        return (x, k) if return_component else x

    # ---------------------------------------------------------------- EDM / VE
    def _log_w(self, x: torch.Tensor, var: torch.Tensor, centres: torch.Tensor,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """log pi_k + log N(x; centres_k, var_k I), (N, K); `var` (K,) or (N, K); `labels` (N,):
        components of other classes get -inf (the class-conditional density)."""
        var = var if var.dim() == 2 else var[None]
        d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        out = torch.log(self.weights)[None] - d2 / (2 * var) - 0.5 * x.shape[1] * torch.log(2 * math.pi * var)
        if labels is not None:
            if self.labels is None:
                raise ValueError("labels given for a mixture without classes")
            out = out.masked_fill(self.labels[None].to(labels.device) != labels[:, None], float("-inf"))
        return out

    @staticmethod
    def _sigma2(sigma, x: torch.Tensor) -> torch.Tensor:
        """sigma^2 as (N, 1) from a float or a (N,) / (N, 1) tensor."""
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return (s.reshape(-1, 1) if s.dim() else s.expand(len(x)).reshape(-1, 1)) ** 2

    def log_prob(self, x: torch.Tensor, sigma=0.0, labels: torch.Tensor | None = None) -> torch.Tensor:
        var = self.stds[None] ** 2 + self._sigma2(sigma, x)
        return torch.logsumexp(self._log_w(x, var, self.means, labels), -1)

    def denoise(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        """E[x0 | x_sigma = x] (EDM's D(x, sigma)), (N, D); `sigma` a float or one per row;
        `labels`: the class-conditional denoiser."""
        s2 = self.stds[None] ** 2                                   # (1, K)
        sig2 = self._sigma2(sigma, x)                               # (N, 1)
        var = s2 + sig2                                             # (N, K)
        w = torch.softmax(self._log_w(x, var, self.means, labels), -1)
        per = (sig2[..., None] * self.means[None] + s2[..., None] * x[:, None, :]) / var[..., None]
        return (w[..., None] * per).sum(1)

    def score(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        """grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2 (Tweedie); at sigma=0 the data score."""
        if not torch.is_tensor(sigma) and sigma == 0:
            var = self.stds**2
            w = torch.softmax(self._log_w(x, var, self.means, labels), -1)
            return (w[..., None] * (self.means[None] - x[:, None, :]) / var[None, :, None]).sum(1)
        return (self.denoise(x, sigma, labels) - x) / self._sigma2(sigma, x)

    # ---------------------------------------------------------------- rectified flow
    def velocity(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """E[eps - x0 | x_t = x] for x_t = (1 - t) x0 + t eps, 0 < t < 1, (N, D)."""
        s2 = self.stds**2
        var = (1 - t) ** 2 * s2 + t**2
        centres = (1 - t) * self.means
        w = torch.softmax(self._log_w(x, var, centres), -1)
        resid = x[:, None, :] - centres[None]
        e_x0 = self.means[None] + ((1 - t) * s2 / var)[None, :, None] * resid
        e_eps = (t / var)[None, :, None] * resid
        return (w[..., None] * (e_eps - e_x0)).sum(1)


def ring(k: int = 8, radius: float = 4.0, std: float = 0.15, skew: float | None = None) -> Mixture:
    """K modes on a circle; `skew`: weights proportional to skew^k (the spec's mode-coverage case: 0.6)."""
    ang = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    w = torch.ones(k, dtype=torch.float64) if skew is None else skew ** torch.arange(k, dtype=torch.float64)
    return Mixture(torch.stack([radius * ang.cos(), radius * ang.sin()], -1), torch.full((k,), std, dtype=torch.float64),
                   w / w.sum())


def grid(side: int = 5, spacing: float = 2.0, std: float = 0.15) -> Mixture:
    c = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    means = torch.cartesian_prod(c, c)
    n = len(means)
    return Mixture(means, torch.full((n,), std, dtype=torch.float64), torch.full((n,), 1.0 / n, dtype=torch.float64))


def swiss_roll(components: int = 100, std: float = 0.12) -> Mixture:
    """A swiss roll (sklearn's parameterisation t in [1.5 pi, 4.5 pi], (t cos t, t sin t) / 3) as
    equally weighted small components along the spiral, spaced evenly in t."""
    t = 1.5 * math.pi * (1 + 2 * torch.linspace(0, 1, components, dtype=torch.float64))
    means = torch.stack([t * t.cos(), t * t.sin()], -1) / 3.0
    return Mixture(means, torch.full((components,), std, dtype=torch.float64),
                   torch.full((components,), 1.0 / components, dtype=torch.float64))


def class_mixture(classes: int = 10, per_class: int = 3, radius: float = 4.0, spread: float = 0.8,
                  std: float = 0.15, seed: int = 0) -> Mixture:
    """`classes` clusters on a circle, each `per_class` components scattered around its centre."""
    g = torch.Generator().manual_seed(seed)
    ang = torch.arange(classes, dtype=torch.float64) * 2 * math.pi / classes
    centres = torch.stack([radius * ang.cos(), radius * ang.sin()], -1)
    offsets = torch.randn(classes, per_class, 2, generator=g, dtype=torch.float64) * spread
    means = (centres[:, None, :] + offsets).reshape(-1, 2)
    n = len(means)
    return Mixture(means, torch.full((n,), std, dtype=torch.float64), torch.full((n,), 1.0 / n, dtype=torch.float64),
                   labels=torch.arange(classes).repeat_interleave(per_class))


MIXTURES = {"ring": ring, "grid": grid, "swiss": swiss_roll, "classes": class_mixture}


def orbit(positions: int = 16, radius: float = 4.0):
    """The points a sequence moves through: `positions` equally spaced on a circle, (P, 2)."""
    ang = torch.arange(positions, dtype=torch.float64) * 2 * math.pi / positions
    return torch.stack([radius * ang.cos(), radius * ang.sin()], -1)


def sequence_mixture(frames: int = 12, positions: int = 16, radius: float = 4.0, std: float = 0.15) -> Mixture:
    """A toy video (a CPU-sized stand-in for LiveTalk's videos: "LiveTalk: Real-Time Multimodal Interactive Video Diffusion via Improved On-Policy Distillation"): a point that moves one
    position per frame around a circle of `positions`, clockwise or not, from any start, each frame
    with its own N(0, std^2) jitter. Flattened (frame 0 x, y, frame 1 x, y, ...), it is a mixture
    of 2 * positions Gaussians in 2 * frames dimensions, so its denoiser is exact; components
    0 .. P-1 turn counter-clockwise from start k, P .. 2P-1 clockwise. Every window of a longer
    sequence is itself a sequence of this mixture (the process is stationary)."""
    pts = orbit(positions, radius)
    f = torch.arange(frames)
    means = [pts[(k + d * f) % positions].reshape(-1) for d in (1, -1) for k in range(positions)]
    n = 2 * positions
    return Mixture(torch.stack(means), torch.full((n,), std, dtype=torch.float64),
                   torch.full((n,), 1.0 / n, dtype=torch.float64))

"""Distribution metrics for generated 2-D samples (sliced Wasserstein distance, MMD, mode coverage).

- `sliced_wasserstein(a, b)`: the mean over random unit directions of the 1-D W2 distance between
  the projected samples (sorted; unequal sizes compared at matched quantiles). Reported as a ratio
  to the noise floor: the same metric between independent draws of the teacher (the evaluation
  averages it over 8 draws).
- `mmd2(a, b)`: the unbiased MMD^2 with an RBF kernel, bandwidth by the median heuristic (the
  median pairwise distance of the pooled samples) unless given.
- `mode_stats(x, mixture)`: recall = share of modes holding >= 20% of their expected share of
  samples within 3 std of the mode; precision = share of samples within 3 std of any mode. Where
  the weights differ (the skewed ring), also the recall of the 3 lightest modes and the mass the
  samples put on them against their weight (1 = right; mode-seeking students fall below).
"""

from __future__ import annotations

import torch


def _quantiles(v: torch.Tensor, n: int) -> torch.Tensor:
    """`n` evenly spaced quantiles of the columns of sorted `v` (N, D) by linear interpolation."""
    if len(v) == n:
        return v
    pos = torch.linspace(0, len(v) - 1, n, dtype=v.dtype)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo)[:, None]
    return v[lo] * (1 - frac) + v[hi] * frac


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_directions: int = 256, seed: int = 0) -> float:
    a, b = a.double(), b.double()
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(a.shape[1], n_directions, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    pa, pb = (a @ u).sort(0).values, (b @ u).sort(0).values
    n = max(len(pa), len(pb))
    pa, pb = _quantiles(pa, n), _quantiles(pb, n)
    return float(((pa - pb) ** 2).mean(0).sqrt().mean())


def swd_ratio(samples: torch.Tensor, teacher_a: torch.Tensor, teacher_b: torch.Tensor, **kw) -> dict:
    """SWD(samples, teacher_a) and its ratio to the noise floor SWD(teacher_b, teacher_a)."""
    swd, floor = sliced_wasserstein(samples, teacher_a, **kw), sliced_wasserstein(teacher_b, teacher_a, **kw)
    return {"swd": swd, "swd_floor": floor, "swd_ratio": swd / floor if floor > 0 else float("inf")}


def mmd2(a: torch.Tensor, b: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with k(x, y) = exp(-|x - y|^2 / (2 h^2))."""
    a, b = a.double(), b.double()
    if bandwidth is None:
        pooled = torch.cat([a, b])
        d = torch.cdist(pooled, pooled)
        bandwidth = float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), 1)].median())
    k = lambda x, y: torch.exp(-torch.cdist(x, y) ** 2 / (2 * bandwidth**2))  # noqa: E731
    m, n = len(a), len(b)
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return float((kaa.sum() - kaa.diagonal().sum()) / (m * (m - 1)) + (kbb.sum() - kbb.diagonal().sum()) / (n * (n - 1))
                 - 2 * kab.mean())


def mode_stats(x: torch.Tensor, mixture, radius_stds: float = 3.0, min_share: float = 0.2) -> dict:
    x = x.double()
    d = torch.cdist(x, mixture.means)                         # (N, K)
    near = d <= radius_stds * mixture.stds[None]
    counts = near.sum(0).double()
    expected = mixture.weights * len(x)
    covered = counts >= min_share * expected
    out = {"modes_covered": int(covered.sum()), "modes": mixture.K, "recall": float(covered.double().mean()),
           "precision": float(near.any(1).double().mean())}
    if mixture.K > 3 and float(mixture.weights.max() - mixture.weights.min()) > 1e-9:
        light = torch.argsort(mixture.weights)[:3]
        out["light_recall"] = float(covered[light].double().mean())
        out["light_mass"] = float(counts[light].sum() / expected[light].sum())
    return out

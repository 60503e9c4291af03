"""Noise levels and samplers, in the EDM convention of `retort.diffuse.nets` (x_sigma = x0 + sigma n).

- `karras(n, sigma_min, sigma_max, rho=7)`: the n noise levels of Karras et al. (descending, no 0).
- `heun(denoiser, z, sigmas)`: EDM's deterministic 2nd-order sampler (Algorithm 1): the teacher at
  its full step count; NFE = 2 n - 1 (the last step is Euler, to sigma = 0).
- `euler(...)`: the 1st-order ODE sampler (NFE = n); `euler(..., sigmas=[s])` is one call to D.
- `renoise(generator, z, sigmas)`: the few-step generator's sampler (DMD2's multi-step and
  consistency models'): x0 = G(x, sigma_i), then x = x0 + sigma_{i+1} n with fresh noise; NFE = n.
- `student_sigmas(n, sigma_max)`: the levels of an n-step student: DMD2's t = 999, 749, 499, 249 of
  1000 Karras levels for n = 4, generally t_i = 999 - i * 1000 / n.
- `phase_levels(bounds, n)`: Phased DMD's levels, n / K Karras levels in each of its K phases.
- `ode_states(denoiser, z, levels, substeps)`: the teacher's ODE trajectory from sigma_max z, its
  states at given levels and its end (the pairs an ODE initialisation regresses onto).
- `hybrid(teacher, student, z, ...)`: diversity distillation's hybrid inference (Gandikota & Bau):
  the teacher's first step(s), its x0 re-noised to the student's next level, then the student.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .nets import _per_row

SIGMA_MIN = 0.002


def karras(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    if n == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def train_sigmas(sigma_max: float, n: int = 1000, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """The 1000 Karras levels of DMD2's EDM code, ascending: index t = 0 is sigma_min, 999 sigma_max."""
    return karras(n, sigma_min, sigma_max).flip(0)


def student_sigmas(n_steps: int, sigma_max: float) -> list[float]:
    table = train_sigmas(sigma_max)
    return [float(table[999 - (i * 1000) // n_steps]) for i in range(n_steps)]


def phase_levels(bounds: list[float], steps: int) -> list[list[float]]:
    """The sampling levels of each phase: `steps / K` Karras levels from the phase's top down (its
    bottom bound excluded; the last phase's bottom is 0, where the sampler ends)."""
    k = len(bounds) - 1
    if steps % k:
        raise ConfigError(f"student.steps={steps}: phased_dmd needs a multiple of the {k} phases")
    m = steps // k
    out = []
    for i in range(k):
        lo = bounds[i + 1] if bounds[i + 1] > 0 else 0.002
        out.append(karras(m + 1, sigma_min=lo, sigma_max=bounds[i])[:m].tolist() if m > 1 or bounds[i + 1] > 0
                   else [bounds[i]])
    return out


def _call(model, x, sigma, labels, guidance: float):
    if guidance != 1.0 and labels is not None and hasattr(model, "guided"):
        return model.guided(x, sigma, labels, guidance)
    return model(x, _per_row(sigma, x), labels)


@torch.no_grad()
def heun(model, z: torch.Tensor, sigmas, labels=None, guidance: float = 1.0) -> torch.Tensor:
    """`z` ~ N(0, I); starts at x = sigmas[0] * z and integrates dx/dsigma = (x - D) / sigma to 0."""
    sig = [float(s) for s in sigmas] + [0.0]
    x = z * sig[0]
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        d = (x - _call(model, x, s, labels, guidance)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - _call(model, x_next, s_next, labels, guidance)) / s_next
            x_next = x + (s_next - s) * (d + d2) / 2
        x = x_next
    return x


@torch.no_grad()
def ode_states(model, z: torch.Tensor, levels, substeps: int = 8, labels=None) -> tuple[list, torch.Tensor]:
    """Heun from levels[0] * z to 0 through every level of `levels` (descending), `substeps` Karras
    steps between consecutive levels (and from the last to 0): (the state at each level, the end)."""
    lv = [float(v) for v in levels]
    x = z * lv[0]
    states = []
    for i, top in enumerate(lv):
        states.append(x)
        bottom = lv[i + 1] if i + 1 < len(lv) else 0.0
        seg = karras(substeps + 1, sigma_min=max(bottom, SIGMA_MIN), sigma_max=top)
        seg = seg.tolist()[:-1] if bottom > 0 else seg.tolist()
        for j, s in enumerate(seg):
            nxt = seg[j + 1] if j + 1 < len(seg) else bottom
            d = (x - _call(model, x, s, labels, 1.0)) / s
            x_next = x + (nxt - s) * d
            if nxt > 0:
                d2 = (x_next - _call(model, x_next, nxt, labels, 1.0)) / nxt
                x_next = x + (nxt - s) * (d + d2) / 2
            x = x_next
    return states, x


@torch.no_grad()
def euler(model, z: torch.Tensor, sigmas, labels=None, guidance: float = 1.0) -> torch.Tensor:
    sig = [float(s) for s in sigmas] + [0.0]
    x = z * sig[0]
    for i in range(len(sig) - 1):
        d = (x - _call(model, x, sig[i], labels, guidance)) / sig[i]
        x = x + (sig[i + 1] - sig[i]) * d
    return x


def renoise(model, z: torch.Tensor, sigmas, labels=None, generator: torch.Generator | None = None,
            noises: list | None = None, guidance: float = 1.0) -> torch.Tensor:
    """The few-step generator's sampler; `noises`: the re-noising draws (else from `generator`).
    Carries gradients (DMD2 trains through its last step); wrap in no_grad to sample."""
    sig = [float(s) for s in sigmas]
    x = z * sig[0]
    for i, s in enumerate(sig):
        x0 = _call(model, x, s, labels, guidance)
        if i + 1 < len(sig):
            n = noises[i] if noises is not None else torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = x0 + sig[i + 1] * n
    return x0


@torch.no_grad()
def hybrid(teacher, student, z, teacher_sigmas, student_sigmas_, labels=None, generator=None,
           teacher_guidance: float = 1.0) -> torch.Tensor:
    """The teacher's first steps at teacher_sigmas (each x0 prediction re-noised to the next level,
    the last to student_sigmas_[0]; the spec's reading of the hand-off), then the student's
    re-noising sampler from there."""
    x = z * float(teacher_sigmas[0])
    sig = [float(s) for s in teacher_sigmas]
    for i in range(len(sig)):
        x0 = _call(teacher, x, sig[i], labels, teacher_guidance)
        nxt = sig[i + 1] if i + 1 < len(sig) else float(student_sigmas_[0])
        x = x0 + nxt * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    rest = [float(s) for s in student_sigmas_]
    for i, s in enumerate(rest):
        x0 = student(x, _per_row(s, x), labels)
        if i + 1 < len(rest):
            x = x0 + rest[i + 1] * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x0

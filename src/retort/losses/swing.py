"""Swing distillation's soft-target term, shared by the classifier and language-model tracks:
"Swing Distillation: A Privacy-Preserving Knowledge Distillation Framework" (Li, Wu, Dong, Wu, Bian,
Xiong; arXiv 2212.08349). Only the abstract was reached, so this is the reconstruction of
methods/other.md §3.2 (tagged [I] there), not the paper's equations:

    tau_i = tau_0 + rise * rho_i                     rho_i in [0, 1]: how likely item i is private
    q_i   = softmax(z_i^T / tau_i)
    q~_i  = max(q_i + eta_i, 0) / sum_v max(q_i + eta_i, 0),   eta_i ~ N(0, sigma^2 I),  sigma = noise / V
    L_i   = s_i^2 * D(softmax(z_i^S / s_i) || q~_i)              D = forward KL: KL(q~_i || p_S^{s_i})

A higher temperature flattens the teacher's distribution where the item is private (the "swing");
the noise keeps the transferred knowledge from being exact. s_i is the student's temperature: the
spec writes tau_i (both sides swung); the methods default to the base temperature tau_0, so that the
flattened target is what the student learns to output (both sides at a high tau tend to matching the
logits, which transfers what the teacher memorised: see the methods' docstrings). `noise` is sigma
in units of the uniform probability 1/V, so the target's expected total-variation change, about a
third of `noise`, does not depend on the vocabulary size (0.2: about 0.07, the spec's 0.05-0.1).

Functions follow `retort.losses.divergences`: student first, teacher second, float32 inside, one
value per item (`(...)` for inputs `(..., V)`), no masking and no averaging.
"""

from __future__ import annotations

import torch

from .divergences import DIVERGENCES

Temperature = float | torch.Tensor


def swing_temperature(rho: torch.Tensor, base: float, rise: float) -> torch.Tensor:
    """tau = base + rise * rho, per item (float32): `rho` (...) in [0, 1] -> (...)."""
    return base + rise * rho.float()


def target_noise(shape, noise: float, generator: torch.Generator, device=None) -> torch.Tensor:
    """eta ~ N(0, sigma^2 I) with sigma = noise / V (V = shape[-1]), drawn from `generator` (seeded
    by the caller, so a resumed run draws the same noise)."""
    eta = torch.randn(shape, generator=generator, device=device or generator.device, dtype=torch.float32)
    return eta.mul_(noise / shape[-1])


def _tempered(logits: torch.Tensor, temperature: Temperature) -> torch.Tensor:
    t = temperature.float().unsqueeze(-1) if torch.is_tensor(temperature) else temperature
    return torch.log_softmax(logits.float() / t, dim=-1)


def noisy_target_logprobs(teacher_logits: torch.Tensor, temperature: Temperature,
                          eta: torch.Tensor | None = None) -> torch.Tensor:
    """log q~: the teacher's tempered log-distribution with `eta` (..., V) added to its probabilities,
    clipped at 0 and renormalised (log 0 = -inf where the noise emptied a class); without `eta`,
    exactly log_softmax(z / tau). A row the noise would empty entirely keeps its clean target."""
    lt = _tempered(teacher_logits, temperature)
    if eta is None:
        return lt
    q = (lt.exp() + eta).clamp_min_(0.0)
    total = q.sum(-1, keepdim=True)
    return torch.where(total > 0, q.log() - total.clamp_min(torch.finfo(q.dtype).tiny).log(), lt)


def swing_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: Temperature,
             eta: torch.Tensor | None = None, student_temperature: Temperature | None = None,
             divergence: str = "forward_kl", beta: float = 0.5, alpha: float = 0.1,
             t_squared: bool = True) -> torch.Tensor:
    """s^2 * D(P_S^s || q~) per item, with q~ the teacher's target at `temperature` tau (a number or one
    per item, `(...)`, e.g. `swing_temperature(rho, ...)`) and s = `student_temperature` (default: tau).
    student_logits, teacher_logits: (..., V); eta: (..., V) or None.
    `divergence` names one of `retort.losses.divergences.DIVERGENCES` (forward_kl: KL(q~ || p_S), the
    spec's; jsd's `beta` weighs the teacher, the skew KLs' `alpha` the mixture), so with tau constant
    and eta None this is `kd`'s per-token term (and with forward_kl, `hinton_kd`) exactly.
    Returns (...)."""
    t_s = temperature if student_temperature is None else student_temperature
    ls = _tempered(student_logits, t_s)
    lt = noisy_target_logprobs(teacher_logits, temperature, eta)
    fn = DIVERGENCES[divergence]
    value = fn(ls, lt, beta) if divergence == "jsd" else fn(ls, lt, alpha) if divergence.startswith("skew") \
        else fn(ls, lt)
    if not t_squared:
        return value
    t = t_s.float() if torch.is_tensor(t_s) else t_s
    return t**2 * value


def infinite_with_noise(divergence: str, beta: float, alpha: float) -> bool:
    """Whether D(p_S || q~) is infinite once the noise empties a class of q~ (reverse KL and its
    limits weigh log q~ by the student's mass)."""
    return divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0) or \
        (divergence == "skew_reverse_kl" and alpha == 0.0)


__all__ = ["infinite_with_noise", "noisy_target_logprobs", "swing_kd", "swing_temperature", "target_noise"]

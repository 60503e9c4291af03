"""Per-token divergences between a student and a teacher next-token distribution.

Every function is `f(student_logits, teacher_logits, *, temperature=1.0, ...) -> Tensor[...]`:
inputs `(..., V)`, output `(...)` — one value per position, no masking, no averaging (that is
`retort.losses.reduce`'s job, done once). Student first, teacher second. Computation is in float32
whatever the input dtype.

Temperature: both logits are divided by the same `temperature` before the softmax (the convention
of TSD-KD, OPSD and TRL). The functions return the divergence of the *tempered* distributions with
no T^2 factor; a method that wants Hinton's T^2 gradient-scale correction applies it itself (the
`kd` method does, so that changing T does not silently rescale the KD term against CE).

Each divergence also has a `*_logp` form over log-probabilities, which the sparse (top-k teacher)
path and the fused chunked path share.
"""

from __future__ import annotations

import math

import torch


def _logp(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def _xlogx_ratio(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """sum_v p (log p - log q), with 0 log 0 = 0 (p = 0 entries contribute nothing even if q = 0)."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def forward_kl_logp(ls: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:
    return _xlogx_ratio(lt, ls)


def reverse_kl_logp(ls: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:
    return _xlogx_ratio(ls, lt)


def _log_mix(la: torch.Tensor, lb: torch.Tensor, w: float) -> torch.Tensor:
    """log(w * exp(la) + (1 - w) * exp(lb)), stably."""
    return torch.logaddexp(la + math.log(w), lb + math.log1p(-w))


def generalized_jsd_logp(ls: torch.Tensor, lt: torch.Tensor, beta: float) -> torch.Tensor:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl_logp(ls, lt)
    if beta == 1.0:
        return reverse_kl_logp(ls, lt)
    lm = _log_mix(lt, ls, beta)
    return beta * _xlogx_ratio(lt, lm) + (1 - beta) * _xlogx_ratio(ls, lm)


def skew_forward_kl_logp(ls: torch.Tensor, lt: torch.Tensor, alpha: float) -> torch.Tensor:
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    return _xlogx_ratio(lt, _log_mix(lt, ls, alpha) if alpha > 0 else ls)


def skew_reverse_kl_logp(ls: torch.Tensor, lt: torch.Tensor, alpha: float) -> torch.Tensor:
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    return _xlogx_ratio(ls, _log_mix(ls, lt, alpha) if alpha > 0 else lt)


def tvd_logp(ls: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:
    return 0.5 * (ls.exp() - lt.exp()).abs().sum(-1)


def forward_kl(student_logits, teacher_logits, *, temperature: float = 1.0):
    """KL(P_T || P_S) = sum_v P_T(v) [log P_T(v) - log P_S(v)]: mean-seeking, the classic KD loss.
    student_logits, teacher_logits: (..., V) -> (...)."""
    return forward_kl_logp(_logp(student_logits, temperature), _logp(teacher_logits, temperature))


def reverse_kl(student_logits, teacher_logits, *, temperature: float = 1.0):
    """KL(P_S || P_T) = sum_v P_S(v) [log P_S(v) - log P_T(v)]: mode-seeking (MiniLLM, on-policy KD).
    student_logits, teacher_logits: (..., V) -> (...)."""
    return reverse_kl_logp(_logp(student_logits, temperature), _logp(teacher_logits, temperature))


def generalized_jsd(student_logits, teacher_logits, *, beta: float = 0.5, temperature: float = 1.0):
    """Generalized JSD in TRL's convention (GKD, Agarwal et al. 2024, arXiv:2306.13649):
    M = beta * P_T + (1 - beta) * P_S;  GJSD = beta * KL(P_T || M) + (1 - beta) * KL(P_S || M).
    `beta` weights the teacher. beta = 0 returns exactly forward KL(P_T || P_S), beta = 1 exactly
    reverse KL(P_S || P_T) (TRL's branch shortcuts; the formula itself tends to 0 at both ends);
    beta = 0.5 is the symmetric Jensen-Shannon divergence. (..., V) -> (...)."""
    return generalized_jsd_logp(_logp(student_logits, temperature), _logp(teacher_logits, temperature), beta)


def skew_forward_kl(student_logits, teacher_logits, *, alpha: float = 0.1, temperature: float = 1.0):
    """Skew KL of DistiLLM (Ko et al. 2024, arXiv:2402.03898): KL(P_T || alpha P_T + (1 - alpha) P_S).
    alpha = 0 is forward KL; the mixture keeps the loss finite where P_S -> 0. (..., V) -> (...)."""
    return skew_forward_kl_logp(_logp(student_logits, temperature), _logp(teacher_logits, temperature), alpha)


def skew_reverse_kl(student_logits, teacher_logits, *, alpha: float = 0.1, temperature: float = 1.0):
    """Skew reverse KL of DistiLLM: KL(P_S || alpha P_S + (1 - alpha) P_T). alpha = 0 is reverse KL.
    (..., V) -> (...)."""
    return skew_reverse_kl_logp(_logp(student_logits, temperature), _logp(teacher_logits, temperature), alpha)


def tvd(student_logits, teacher_logits, *, temperature: float = 1.0):
    """Total variation distance 0.5 * sum_v |P_S(v) - P_T(v)| (symmetric, bounded by 1). (..., V) -> (...)."""
    return tvd_logp(_logp(student_logits, temperature), _logp(teacher_logits, temperature))


def sparse_teacher_logprobs(student_logits, topk_ids, topk_logprobs, *, tail: str = "drop",
                            temperature: float = 1.0):
    """Student and teacher log-distributions over the teacher's stored top-k (offline traces,
    inference servers), ready for any `*_logp` divergence.

    student_logits: (..., V); topk_ids: (..., k) int; topk_logprobs: (..., k), the teacher's
    log-probs at temperature 1. Returns (ls, lt), both (..., k) for tail="drop" — both
    distributions renormalised over the k ids (OPSD's top-k loss); temperature applies exactly,
    since renormalising softmax(z/T) over a subset needs only the subset — or (..., k+1) for
    tail="bucket", the last bucket holding each side's remaining mass (needs temperature 1: the
    teacher's tempered tail mass is not recoverable from its top-k)."""
    ids = topk_ids.long()
    if tail == "drop":
        ls = torch.log_softmax(student_logits.float().gather(-1, ids) / temperature, dim=-1)
        lt = torch.log_softmax(topk_logprobs.float() / temperature, dim=-1)
        return ls, lt
    if tail != "bucket":
        raise ValueError(f"tail must be 'drop' or 'bucket', got {tail!r}")
    if temperature != 1.0:
        raise ValueError("tail='bucket' needs temperature=1.0 (the tempered tail mass is unknown)")
    full = torch.log_softmax(student_logits.float(), dim=-1)
    ls_k = full.gather(-1, ids)
    lt_k = topk_logprobs.float()
    # log(1 - sum exp(l)), clamped: stored top-k mass can round to slightly above 1
    ls_tail = torch.log1p(-ls_k.exp().sum(-1).clamp(max=1 - 1e-7)).unsqueeze(-1)
    lt_tail = torch.log1p(-lt_k.exp().sum(-1).clamp(max=1 - 1e-7)).unsqueeze(-1)
    return torch.cat([ls_k, ls_tail], -1), torch.cat([lt_k, lt_tail], -1)


DIVERGENCES = {
    "forward_kl": forward_kl_logp,
    "reverse_kl": reverse_kl_logp,
    "jsd": generalized_jsd_logp,
    "skew_forward_kl": skew_forward_kl_logp,
    "skew_reverse_kl": skew_reverse_kl_logp,
    "tvd": tvd_logp,
}

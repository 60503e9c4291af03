"""Per-example distillation losses for classifiers: Hinton's KD, decoupled KD (DKD) and
Plackett-Luce distillation (PLD).

Every function is `f(student_logits, teacher_logits, [target,] *, ...) -> Tensor[B]`: logits
`(B, C)`, integer labels `(B,)`, one value per example, no averaging (the method sums, the loop
divides by the global count). Student first, teacher second. Computation is in float32 whatever
the input dtype.
"""

from __future__ import annotations

import torch

from .divergences import _logp, _xlogx_ratio


def hinton_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 4.0) -> torch.Tensor:
    """T^2 * KL(p_T || p_S), both softened by T: the soft-target term of "Distilling the Knowledge in
    a Neural Network" (Hinton, Vinyals, Dean 2015, arXiv 1503.02531), eq. 2 and the T^2 remark
    below it (the gradient's scale is kept as T changes). Inputs `(B, C)`, output `(B,)`."""
    ls, lt = _logp(student_logits, temperature), _logp(teacher_logits, temperature)
    return temperature**2 * _xlogx_ratio(lt, ls)


def _split_target(logits: torch.Tensor, target: torch.Tensor, temperature: float):
    """(log b, log (1 - b), log p-hat): the tempered probability of the target class, of the rest,
    and the distribution over the non-target classes alone (-inf at the target)."""
    z = logits.float() / temperature
    is_t = torch.zeros_like(z, dtype=torch.bool).scatter_(1, target.long().view(-1, 1), True)
    lse = torch.logsumexp(z, dim=-1)
    z_rest = z.masked_fill(is_t, float("-inf"))
    lse_rest = torch.logsumexp(z_rest, dim=-1)
    log_b = z.gather(1, target.long().view(-1, 1)).squeeze(1) - lse
    return log_b, lse_rest - lse, z_rest - lse_rest.unsqueeze(-1)


def dkd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, *,
        alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> torch.Tensor:
    """Decoupled KD, "Decoupled Knowledge Distillation" (Zhao et al., CVPR 2022, arXiv 2203.08679),
    eq. 7: alpha * TCKD + beta * NCKD, each times T^2 as in the authors' mdistiller code.

    TCKD = KL(b_T || b_S) between the binary (target, rest) distributions; NCKD = KL(p-hat_T ||
    p-hat_S) between the distributions over the non-target classes. The paper's identity (eq. 4)
    KD = TCKD + (1 - b_T[target]) NCKD is what alpha=1, beta=1-b_T would give; DKD frees beta.
    mdistiller removes the target by subtracting 1000 from its logit; here it is masked exactly.
    Output `(B,)`."""
    sb, sr, sp = _split_target(student_logits, target, temperature)
    tb, tr, tp = _split_target(teacher_logits, target, temperature)
    tckd = _xlogx_ratio(torch.stack([tb, tr], -1), torch.stack([sb, sr], -1))
    # p-hat puts 0 on the target: its term is 0 (filled finite there, so no inf reaches a gradient)
    out = torch.isinf(tp)
    tp, sp = tp.masked_fill(out, 0.0), sp.masked_fill(out, 0.0)
    nckd = (tp.exp().masked_fill(out, 0.0) * (tp - sp)).sum(-1)
    return temperature**2 * (alpha * tckd + beta * nckd)


PL_WEIGHTS = ("teacher", "uniform", "ce")


def plackett_luce(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, *,
                  temperature: float = 1.0, weights: str = "teacher") -> torch.Tensor:
    """Plackett-Luce distillation, "Knowledge Distillation via the Plackett-Luce Model" (Bassam, Zhu,
    Bian; NeurIPS 2025, arXiv 2506.12542), section 4:

        pi*   = (y, the other classes by descending teacher logit)     (stable sort on ties)
        L_PLD = sum_k alpha_k (log sum_{l >= k} exp s_{pi*_l} - s_{pi*_k})

    with alpha_k = softmax(t / temperature)[pi*_k], not renormalised (`weights="teacher"`, the
    paper's); `"uniform"`: alpha_k = 1/C (PLD-ListMLE); `"ce"`: alpha = (1, 0, ..., 0), which is
    exactly cross-entropy (the first PL step). The student's logits are not tempered. Convex in
    the student logits and unchanged by adding a constant to them. Output `(B,)`."""
    if weights not in PL_WEIGHTS:
        raise ValueError(f"weights must be one of {PL_WEIGHTS}, got {weights!r}")
    s, t = student_logits.float(), teacher_logits.float()
    y = target.long().view(-1, 1)
    C = s.shape[-1]
    # the target first (its teacher logit raised above every other), then descending teacher logit
    key = t.scatter(1, y, float("inf"))
    perm = torch.sort(key, dim=-1, descending=True, stable=True).indices
    sp = s.gather(1, perm)
    suffix_lse = torch.logcumsumexp(sp.flip(-1), dim=-1).flip(-1)
    if weights == "teacher":
        w = _logp(t, temperature).exp().gather(1, perm)
    elif weights == "uniform":
        w = torch.full_like(sp, 1.0 / C)
    else:
        w = torch.zeros_like(sp)
        w[:, 0] = 1.0
    return (w * (suffix_lse - sp)).sum(-1)


def ground_truth_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, *,
                     alpha: float) -> torch.Tensor:
    """alpha MSE(softmax s, onehot y) + (1 - alpha) MSE(softmax s, softmax t), each the mean over
    classes: the self-distillation loss of Borup & Andersen's `self_distiller.py` ("Even your Teacher
    Needs Guidance", NeurIPS 2021, arXiv 2102.13088). alpha=1: the labels alone; alpha=0: the teacher
    alone. Output `(B,)`."""
    p = torch.softmax(student_logits.float(), -1)
    onehot = torch.nn.functional.one_hot(target.long(), p.shape[-1]).float()
    q = torch.softmax(teacher_logits.float(), -1)
    return alpha * ((p - onehot) ** 2).mean(-1) + (1 - alpha) * ((p - q) ** 2).mean(-1)


def soft_target_kl(student_logits: torch.Tensor, target_probs: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """T^2 KL(q || softmax(s / T)) for a given target distribution q `(B, K)` (a mixture of teachers,
    LELP's subclass targets), zero-probability entries contributing nothing. Output `(B,)`."""
    ls = _logp(student_logits, temperature)
    q = target_probs.float()
    lq = torch.log(torch.where(q > 0, q, torch.ones_like(q)))
    return temperature**2 * torch.where(q > 0, q * (lq - ls), torch.zeros_like(q)).sum(-1)

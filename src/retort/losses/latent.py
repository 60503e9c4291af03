"""System-1.5's two self-distillation losses (arXiv:2505.18962), per example: `(B,)` tensors the
method sums (the loop divides by the number of examples). Pure functions of the two passes'
outputs; the passes themselves are the student's (`retort.lm.models.system15`).

Stage 1, language to latent (CODI's form, Shen et al. 2025, arXiv:2502.21074: the paper says
"self-distillation", the terms are CODI's):
    L1 = CE_student(answer | x, k latent steps) + teacher_weight * CE_teacher(CoT, answer | x)
         + align_weight * (1/L) sum_l mean_d |h_S,l - sg(h_T,l)| / (std_d(sg(h_T,l)) + eps)
with h_l the output of layer l at the token just before the answer value (the ':' of 'A:'), in
the latent pass (student) and in the pass reading the written-out CoT (teacher, the same model).

Stage 2, full path to shortcut:
    L2 = CE_student(answer) + hidden_weight * [ mean_{p,l} nMSE(h_S,p,l, sg(h_T,p,l)) + mean_j nMSE(z_S,j, sg(z_T,j)) ]
         + sparsity * [ mean_{p,l} (1 - w_p,l) + mean_j (1 - s_j) ]
over the generated positions p (latent steps and answer tokens) and layers l; z_j the latent step
outputs; w the depth routers' weights, s the step router's; the teacher is the full path (w = s = 0).
nMSE(s, t) = mean_d (s - t)^2 / (var_d(t) + eps): the spec's MSE divided by the teacher state's
spread (retort's choice, as stage 1 divides by its std), so the term means the same for a tiny
preset and a real model whose residual stream is hundreds of times larger.
The sparsity term is the pressure that makes the routers exit at all (the full path is the teacher).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reduce import IGNORE


def token_ce_mean(logits, labels) -> torch.Tensor:
    """Mean cross-entropy per row over labels != IGNORE, float32; 0 for a row without labels.
    logits: (B, T, V) predicting labels (B, T) at the same positions (already shifted)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                         reduction="none").view(labels.shape)
    n = (labels != IGNORE).sum(-1)
    return ce.sum(-1) / n.clamp_min(1)


def latent_align(student, teacher, eps: float = 1e-6) -> torch.Tensor:
    """(1/L) sum_l mean_d |s - t| / (std_d(t) + eps) per row; student, teacher: (B, L, D) -> (B,).
    The teacher is detached; dividing by its spread makes the layers' terms comparable (CODI)."""
    t = teacher.detach().float()
    return ((student.float() - t).abs().mean(-1) / (t.std(-1) + eps)).mean(-1)


def normalised_mse(student, teacher, eps: float = 1e-6) -> torch.Tensor:
    """mean_d (s - t)^2 / (var_d(t) + eps) over the last dimension, float32; the teacher detached."""
    t = teacher.detach().float()
    return (student.float() - t).pow(2).mean(-1) / (t.var(-1) + eps)


def language_to_latent_loss(student_logits, answer_labels, teacher_logits, teacher_labels, student_states,
                            teacher_states, *, teacher_weight: float = 1.0, align_weight: float = 1.0):
    """Stage 1 per example. student_logits (B, m, V) / answer_labels (B, m): the latent pass on the
    answer; teacher_logits (B, T, V) / teacher_labels (B, T): the CoT pass (shifted, IGNORE outside
    the CoT and answer); *_states (B, L, D): every layer's output at the aligned position.
    Returns (loss (B,), parts dict of (B,) tensors)."""
    ce_s = token_ce_mean(student_logits, answer_labels)
    ce_t = token_ce_mean(teacher_logits, teacher_labels)
    align = latent_align(student_states, teacher_states)
    return ce_s + teacher_weight * ce_t + align_weight * align, {"ce_student": ce_s, "ce_teacher": ce_t,
                                                                 "align": align}


def shortcut_loss(student_logits, answer_labels, student_states, teacher_states, student_latent, teacher_latent,
                  position_mask, w, s, *, hidden_weight: float = 1.0, sparsity: float = 0.1):
    """Stage 2 per example. *_states (B, P, L, D) every layer's output at the P generated positions,
    position_mask (B, P) those that count; *_latent (B, k, D) the latent steps' outputs; w (B, P, L)
    the depth routers' weights, s (B, k) the step router's. Returns (loss (B,), parts)."""
    ce = token_ce_mean(student_logits, answer_labels)
    m = position_mask.float()
    n = m.sum(-1).clamp_min(1) * student_states.shape[2]
    mse = normalised_mse(student_states, teacher_states)  # (B, P, L)
    hidden = (mse * m[..., None]).sum((-1, -2)) / n
    if student_latent.shape[1]:
        hidden = hidden + normalised_mse(student_latent, teacher_latent).mean(-1)
    depth = ((1 - w.float()) * m[..., None]).sum((-1, -2)) / n
    step = (1 - s.float()).mean(-1) if s.shape[1] else torch.zeros_like(depth)
    loss = ce + hidden_weight * hidden + sparsity * (depth + step)
    return loss, {"ce_student": ce, "hidden": hidden, "keep_depth": depth, "keep_step": step}


__all__ = ["language_to_latent_loss", "latent_align", "normalised_mse", "shortcut_loss", "token_ce_mean"]

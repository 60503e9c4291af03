"""The fused chunked path: divergence (+ optional cross-entropy) straight from the student's last
hidden states and lm_head weight, never holding a (tokens x vocabulary) tensor.

Rows (tokens) are processed in chunks. For each chunk the student logits are one matmul; the
teacher's come from its logits or, better, its own hidden states and lm_head (one more matmul).
The gradient with respect to the student logits is written in closed form for every divergence
(below), so a chunk costs the three matmuls that any implementation needs — logits, d hidden,
d weight — plus a few element-wise passes, and the gradients are finished in the forward pass.
Masked rows (label == ignore_index) are dropped before any matmul.

Closed forms. With ls = log_softmax(z / T), p_s = exp(ls), and g = d f / d ls for the per-token
divergence f, the gradient is d f / d z = (g - p_s * sum(g)) / T, where
  forward KL        g = -p_t
  reverse KL        g = p_s (ls - lt + 1)
  JSD(beta)         g = (1 - beta) p_s (ls - lm),          m = beta p_t + (1 - beta) p_s
  skew fwd KL(a)    g = -(1 - a) p_t p_s / m,              m = a p_t + (1 - a) p_s
  skew rev KL(a)    g = p_s (ls - lm + 1 - a p_s / m),     m = a p_s + (1 - a) p_t
  TVD               g = 0.5 sign(p_s - p_t) p_s
(JSD: the terms from d lm / d ls cancel because m is exactly the mixture.)
"""

from __future__ import annotations

from typing import Optional

import torch

from .divergences import DIVERGENCES, _log_mix

IGNORE = -100


def _grad_ls(name: str, ls, lt, ps, pt, beta: float, alpha: float):
    if name == "forward_kl" or (name == "jsd" and beta == 0.0):
        return -pt
    if name == "reverse_kl" or (name == "jsd" and beta == 1.0):
        return ps * (ls - lt + 1)
    if name == "jsd":
        return (1 - beta) * ps * (ls - _log_mix(lt, ls, beta))
    if name == "skew_forward_kl":
        if alpha == 0.0:
            return -pt
        return -(1 - alpha) * pt * ps / _log_mix(lt, ls, alpha).exp()
    if name == "skew_reverse_kl":
        if alpha == 0.0:
            return ps * (ls - lt + 1)
        lm = _log_mix(ls, lt, alpha)
        return ps * (ls - lm + 1 - alpha * ps / lm.exp())
    if name == "tvd":
        return 0.5 * torch.sign(ps - pt) * ps
    raise ValueError(f"unknown divergence {name!r}; known: {', '.join(DIVERGENCES)}")


def _value(name: str, ls, lt, beta: float, alpha: float):
    fn = DIVERGENCES[name]
    if name == "jsd":
        return fn(ls, lt, beta)
    if name.startswith("skew"):
        return fn(ls, lt, alpha)
    return fn(ls, lt)


def _value_and_grad_z(name: str, ls, lt, ps, pt, beta: float, alpha: float):
    """(sum over rows of f, T * d f / d z) for one chunk. The common divergences share their
    intermediates and use sum_v p = 1 to simplify g - p_s sum(g):
      forward KL: T dz = p_s - p_t;  reverse KL: T dz = p_s (ls - lt - f_row);
      JSD: T dz = (1 - beta) p_s (d - sum_v p_s d), d = ls - lm."""
    if name == "forward_kl" or (name == "jsd" and beta == 0.0):
        return (pt * (lt - ls)).sum(), ps - pt
    if name == "reverse_kl" or (name == "jsd" and beta == 1.0):
        d = ls - lt
        row = (ps * d).sum(-1, keepdim=True)
        return row.sum(), ps * (d - row)
    if name == "jsd":
        lm = _log_mix(lt, ls, beta)
        d = ls - lm
        psd = ps * d
        value = beta * (pt * (lt - lm)).sum() + (1 - beta) * psd.sum()
        return value, (1 - beta) * (psd - ps * psd.sum(-1, keepdim=True))
    g = _grad_ls(name, ls, lt, ps, pt, beta, alpha)
    return _value(name, ls, lt, beta, alpha).sum(), g - ps * g.sum(-1, keepdim=True)


def default_chunk(vocab: int) -> int:
    # ~8M float32 entries (32 MB) per (chunk x vocab) buffer, about six live at once; but at least
    # 128 rows, since each chunk also reads and writes the whole (V x H) weight gradient
    return max(128, min(2048, (1 << 23) // max(1, vocab)))


class _FusedLinearDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, t_hidden, t_weight, t_logits, labels, name, beta, alpha, temperature,
                kd_weight, ce_weight, vocab, chunk):
        # Dtypes are handled explicitly below; an ambient autocast (bf16 training) would otherwise
        # turn the float32 gradient matmuls into bf16 ones.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return _FusedLinearDivergence._forward(ctx, hidden, weight, t_hidden, t_weight, t_logits, labels, name,
                                                   beta, alpha, temperature, kd_weight, ce_weight, vocab, chunk)

    @staticmethod
    def _forward(ctx, hidden, weight, t_hidden, t_weight, t_logits, labels, name, beta, alpha, temperature,
                 kd_weight, ce_weight, vocab, chunk):
        valid = (labels != IGNORE).nonzero().squeeze(-1)
        n, h_dim = hidden.shape
        grad_h = torch.zeros((n, h_dim), dtype=torch.float32, device=hidden.device)
        grad_w = torch.zeros((vocab, h_dim), dtype=torch.float32, device=hidden.device)
        w = weight[:vocab].to(hidden.dtype)  # logits in the activations' precision (bf16 under mixed precision)
        w32 = weight[:vocab].float()
        if t_hidden is not None:
            t_w = t_weight[:vocab].to(t_hidden.dtype)
        kd_total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        ce_total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, valid.numel(), chunk):
            rows = valid[start:start + chunk]
            h = hidden[rows]
            z = (h @ w.T).float()
            g_z = torch.zeros_like(z) if not kd_weight else None
            if kd_weight:
                if t_logits is not None:
                    zt = t_logits[rows][:, :vocab].float()
                else:
                    zt = (t_hidden[rows] @ t_w.T).float()
                ls = torch.log_softmax(z / temperature if temperature != 1.0 else z, dim=-1)
                lt = torch.log_softmax(zt / temperature if temperature != 1.0 else zt, dim=-1)
                ps, pt = ls.exp(), lt.exp()
                value, gz = _value_and_grad_z(name, ls, lt, ps, pt, beta, alpha)
                kd_total += value
                g_z = gz.mul_(kd_weight / temperature)
                del lt, pt, zt, gz
                if ce_weight and temperature == 1.0:
                    # CE from the same softmax: -ls[target]; d CE / d z = p_s - onehot(target)
                    tgt = labels[rows]
                    ce_total += -ls.gather(1, tgt[:, None]).sum()
                    g_z.add_(ps, alpha=ce_weight)
                    g_z[torch.arange(rows.numel(), device=z.device), tgt] -= ce_weight
                del ls, ps
            if ce_weight and not (kd_weight and temperature == 1.0):
                lse = torch.logsumexp(z, dim=-1)
                tgt = labels[rows]
                ce_total += (lse - z.gather(1, tgt[:, None])[:, 0]).sum()
                # d CE / d z = softmax(z) - onehot(target)
                p1 = (z - lse[:, None]).exp_()
                p1[torch.arange(rows.numel(), device=z.device), tgt] -= 1
                g_z.add_(p1, alpha=ce_weight)
                del p1
            grad_h[rows] = g_z @ w32
            # in place: a (V x H) temporary per chunk would cost as much memory traffic as the matmul
            grad_w.addmm_(g_z.T, h.float())
            del z, g_z
        ctx.save_for_backward(grad_h, grad_w)
        ctx.in_dtypes = (hidden.dtype, weight.dtype, weight.shape[0])
        loss = kd_weight * kd_total + ce_weight * ce_total
        ctx.mark_non_differentiable(kd_total, ce_total)
        return loss, kd_total, ce_total

    @staticmethod
    def backward(ctx, grad_loss, _g_kd, _g_ce):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype, w_rows = ctx.in_dtypes
        gh = (grad_h * grad_loss).to(h_dtype)
        gw = grad_w * grad_loss
        if gw.shape[0] < w_rows:  # padded vocabulary rows get no gradient
            gw = torch.cat([gw, gw.new_zeros(w_rows - gw.shape[0], gw.shape[1])])
        return gh, gw.to(w_dtype), *([None] * 12)


def fused_linear_divergence(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                            teacher_hidden: Optional[torch.Tensor] = None,
                            teacher_weight: Optional[torch.Tensor] = None,
                            teacher_logits: Optional[torch.Tensor] = None, divergence: str = "forward_kl",
                            beta: float = 0.5, alpha: float = 0.1, temperature: float = 1.0,
                            kd_weight: float = 1.0, ce_weight: float = 0.0, vocab: Optional[int] = None,
                            chunk: Optional[int] = None):
    """Summed `kd_weight * sum_t D(student_t, teacher_t) + ce_weight * sum_t CE_t` over rows whose
    label is not -100, with the student's logits = hidden @ weight.T computed chunk by chunk.

    hidden: (N, H) student last hidden states (already shifted: row t predicts labels[t]);
    weight: (V_s, H) student lm_head (tied embeddings: pass the embedding matrix);
    the teacher as (teacher_hidden (N, H_t), teacher_weight (V_t, H_t)) or teacher_logits (N, V_t);
    vocab: columns compared (the shared vocabulary; defaults to min of the two sizes).
    Returns (loss, kd_sum, ce_sum): `loss` carries gradients to hidden and weight; the two sums are
    detached, for logging. Normalise by the global token count outside (the loop does)."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; known: {', '.join(DIVERGENCES)}")
    if kd_weight and teacher_logits is None and (teacher_hidden is None or teacher_weight is None):
        raise ValueError("give teacher_logits, or teacher_hidden and teacher_weight")
    t_vocab = teacher_logits.shape[-1] if teacher_logits is not None else (
        teacher_weight.shape[0] if teacher_weight is not None else weight.shape[0])
    vocab = vocab or min(weight.shape[0], t_vocab)
    chunk = chunk or default_chunk(vocab)
    if teacher_hidden is not None:
        teacher_hidden = teacher_hidden.detach()
    if teacher_logits is not None:
        teacher_logits = teacher_logits.detach()
    return _FusedLinearDivergence.apply(
        hidden, weight, teacher_hidden, None if teacher_weight is None else teacher_weight.detach(), teacher_logits,
        labels, divergence, float(beta), float(alpha), float(temperature), float(kd_weight), float(ce_weight),
        int(vocab), int(chunk))


__all__ = ["default_chunk", "fused_linear_divergence"]

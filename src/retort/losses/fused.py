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

import torch

from .divergences import DIVERGENCES, _log_mix
from .reduce import IGNORE


def _grad_ls(name: str, ls, lt, ps, pt, beta: float, alpha: float):
    """g = d f / d ls for the divergences without an in-place path in `_chunk_divergence`."""
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
    """(f per row, T * d f / d z) for one chunk, by the general closed form g - p_s sum(g)."""
    g = _grad_ls(name, ls, lt, ps, pt, beta, alpha)
    return _value(name, ls, lt, beta, alpha), g - ps * g.sum(-1, keepdim=True)


def default_chunk(vocab: int) -> int:
    # ~8M float32 entries (32 MB) per (chunk x vocab) buffer, about six live at once; but at least
    # 128 rows, since each chunk also reads and writes the whole (V x H) weight gradient
    return max(128, min(2048, (1 << 23) // max(1, vocab)))


def _matmul_into(out: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> None:
    if h.dtype == torch.float32 and w.dtype == torch.float32:
        torch.mm(h, w.T, out=out)
    else:
        out.copy_(h @ w.T)


def _log_softmax_(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """x = log_softmax(x / T) in place, by ATen's one-kernel log-softmax (`logsumexp` + `sub_` cost
    three times as much: logsumexp allocates two (rows x V) temporaries). The CPU kernel is row-local,
    so writing over its input is exact (tested); elsewhere the result is computed aside and copied."""
    if temperature != 1.0:
        x.div_(temperature)
    if x.device.type == "cpu":
        return torch.ops.aten._log_softmax.out(x, -1, False, out=x)
    return x.copy_(torch.log_softmax(x, -1))


def _dot_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a * b per row, overwriting a (an in-place product and a row sum cost half of a bmm)."""
    return a.mul_(b).sum(-1)


def _ce_into(z: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """CE of each row of z (overwritten with d CE / d z = softmax(z) - onehot(target))."""
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    ce = lse[:, 0] - z.gather(1, tgt[:, None])[:, 0]
    z.sub_(lse).exp_()
    z[torch.arange(z.shape[0], device=z.device), tgt] -= 1
    return ce


def _n_buffers(name: str, beta: float, kd_weight: float, ce_weight: float, temperature: float) -> int:
    if not kd_weight:
        return 1
    if name == "jsd" and 0.0 < beta < 1.0:
        n = 5
    elif name in ("forward_kl", "reverse_kl", "jsd"):
        n = 3
    else:
        n = 4
    return n + 1 if ce_weight and temperature != 1.0 else n


_TINY = torch.finfo(torch.float32).tiny


def _chunk_divergence(name: str, b: list, beta: float, alpha: float, temperature: float, tgt):
    """One chunk, in the buffers b (b[0] = student logits, b[1] = teacher logits, both overwritten).
    Returns (f per row, g, c, p_s, CE per row or None) with c * g = T * d f / d z: g is a view of a
    buffer, and the constant c goes into the matmuls' scale rather than into a pass over g. The CE
    (temperature 1 only) reuses the student's log-softmax; p_s stays in a buffer of its own.
    Each log-softmax overwrites its logits (b[0] = ls, b[1] = lt), then forward and reverse KL need
    one more buffer and JSD three (p_s, p_t, log m). In-place formulas: with sum_v p = 1,
    g - p_s sum(g) simplifies to
      forward KL: p_s - p_t;  reverse KL: p_s (d - sum_v p_s d), d = ls - lt;
      JSD: (1 - beta) p_s (d - sum_v p_s d), d = ls - lm, m = beta p_t + (1 - beta) p_s."""
    ls, lt = _log_softmax_(b[0], temperature), _log_softmax_(b[1], temperature)
    ce = -ls.gather(1, tgt[:, None])[:, 0] if tgt is not None and temperature == 1.0 else None
    if name == "jsd" and beta == 0.0:
        name = "forward_kl"
    if name == "jsd" and beta == 1.0:
        name = "reverse_kl"
    if name == "forward_kl":
        pt = torch.exp(lt, out=b[2])
        value = _dot_(lt.sub_(ls), pt)
        ps = torch.exp(ls, out=b[1])
        return value, pt.neg_().add_(ps), 1.0, ps, ce  # g = p_s - p_t, in b[2]
    ps = torch.exp(ls, out=b[2])
    if name == "reverse_kl":
        d = ls.sub_(lt).mul_(ps)  # p_s d
        row = d.sum(-1, keepdim=True)
        return row[:, 0], d.addcmul_(ps, row, value=-1), 1.0, ps, ce
    pt = torch.exp(lt, out=b[3])
    if name == "jsd":
        lm = torch.lerp(pt, ps, 1 - beta, out=b[4]).clamp_min_(_TINY).log_()
        value_t = _dot_(lt.sub_(lm), pt)  # sum_v p_t (lt - lm)
        psd = ls.sub_(lm).mul_(ps)
        row = psd.sum(-1, keepdim=True)
        value = beta * value_t + (1 - beta) * row[:, 0]
        return value, psd.addcmul_(ps, row, value=-1), 1 - beta, ps, ce
    value, g = _value_and_grad_z(name, ls, lt, ps, pt, beta, alpha)
    return value, b[3].copy_(g), 1.0, ps, ce


class _FusedLinearDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, t_hidden, t_weight, t_logits, labels, row_weight, name, beta, alpha,
                temperature, kd_weight, ce_weight, vocab, chunk):
        # Dtypes are handled explicitly below; an ambient autocast (bf16 training) would otherwise
        # turn the float32 gradient matmuls into bf16 ones.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return _FusedLinearDivergence._forward(ctx, hidden, weight, t_hidden, t_weight, t_logits, labels,
                                                   row_weight, name, beta, alpha, temperature, kd_weight, ce_weight,
                                                   vocab, chunk)

    @staticmethod
    def _forward(ctx, hidden, weight, t_hidden, t_weight, t_logits, labels, row_weight, name, beta, alpha,
                 temperature, kd_weight, ce_weight, vocab, chunk):
        keep = labels != IGNORE
        if row_weight is not None:
            row_weight = row_weight.float()
            keep &= row_weight != 0  # rows weighted 0 (gated out) cost nothing
        valid = keep.nonzero().squeeze(-1)
        n, h_dim = hidden.shape
        dev = hidden.device
        grad_h = torch.zeros((n, h_dim), dtype=torch.float32, device=dev)
        grad_w = torch.zeros((vocab, h_dim), dtype=torch.float32, device=dev)
        w = weight[:vocab].to(hidden.dtype)  # logits in the activations' precision (bf16 under mixed precision)
        w32 = weight[:vocab].float()
        t_w = t_weight[:vocab].to(t_hidden.dtype) if t_hidden is not None else None
        kd_total = torch.zeros((), dtype=torch.float32, device=dev)
        ce_total = torch.zeros((), dtype=torch.float32, device=dev)
        # (chunk x vocab) work buffers, allocated once: a fresh allocation of this size per chunk is
        # an mmap whose pages fault in one by one, which used to cost as much as the element-wise math
        width = min(chunk, valid.numel())
        n_bufs = _n_buffers(name, beta, kd_weight, ce_weight, temperature)
        bufs = [torch.empty((width, vocab), dtype=torch.float32, device=dev) for _ in range(n_bufs)]
        for start in range(0, valid.numel(), chunk):
            rows = valid[start:start + chunk]
            r = rows.numel()
            b = [x[:r] for x in bufs]
            h = hidden[rows]
            _matmul_into(b[0], h, w)
            tgt = labels[rows]
            wr = None if row_weight is None else row_weight[rows]
            if kd_weight:
                if ce_weight and temperature != 1.0:
                    b[-1].copy_(b[0])  # the untempered logits, for the CE term
                if t_logits is not None:
                    b[1].copy_(t_logits[rows][:, :vocab])
                else:
                    _matmul_into(b[1], t_hidden[rows], t_w)
                value, g, g_scale, ps, ce = _chunk_divergence(name, b, beta, alpha, temperature,
                                                              tgt if ce_weight else None)
                kd_total += value.sum() if wr is None else value @ wr
                scale = kd_weight * g_scale / temperature
                if ce is not None:
                    # CE from the student's softmax already computed (T = 1): d CE / d z = p_s - onehot
                    ce_total += ce.sum() if wr is None else ce @ wr
                    g.add_(ps, alpha=ce_weight / scale)
                    g[torch.arange(r, device=dev), tgt] -= ce_weight / scale
                elif ce_weight:
                    ce = _ce_into(b[-1], tgt)
                    ce_total += ce.sum() if wr is None else ce @ wr
                    g.add_(b[-1], alpha=ce_weight / scale)
            else:
                ce = _ce_into(b[0], tgt)
                ce_total += ce.sum() if wr is None else ce @ wr
                g, scale = b[0], ce_weight
            # the scale (and the row weights) go into the (small) matmul operands and outputs
            # instead of a pass over g
            gh = torch.mm(g, w32).mul_(scale)
            h32 = h.float()
            if wr is not None:
                gh.mul_(wr[:, None])
                h32 = h32 * wr[:, None]
            grad_h[rows] = gh
            # in place: a (V x H) temporary per chunk would cost as much memory traffic as the matmul
            grad_w.addmm_(g.T, h32, alpha=scale)
        del bufs
        # kept on ctx, not by save_for_backward: backward hands the one reference over, so autograd can
        # take the (V x H) weight gradient as weight.grad instead of copying it
        ctx.grads = (grad_h, grad_w)
        ctx.in_dtypes = (hidden.dtype, weight.dtype, weight.shape[0])
        loss = kd_weight * kd_total + ce_weight * ce_total
        ctx.mark_non_differentiable(kd_total, ce_total)
        return loss, kd_total, ce_total

    @staticmethod
    def backward(ctx, grad_loss, _g_kd, _g_ce):
        if ctx.grads is None:
            raise RuntimeError("the fused loss's backward runs once per forward: its gradients, computed in the "
                               "forward, are handed over (retain_graph=True and a second backward through it are "
                               "not supported)")
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        h_dtype, w_dtype, w_rows = ctx.in_dtypes
        # in place: a scaled copy of the (V x H) weight gradient would be the largest allocation of the loss
        gh = grad_h.mul_(grad_loss).to(h_dtype)
        gw = grad_w.mul_(grad_loss)
        if gw.shape[0] < w_rows:  # padded vocabulary rows get no gradient
            gw = torch.cat([gw, gw.new_zeros(w_rows - gw.shape[0], gw.shape[1])])
        return gh, gw.to(w_dtype), *([None] * 13)


def fused_linear_divergence(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                            teacher_hidden: torch.Tensor | None = None,
                            teacher_weight: torch.Tensor | None = None,
                            teacher_logits: torch.Tensor | None = None, divergence: str = "forward_kl",
                            beta: float = 0.5, alpha: float = 0.1, temperature: float = 1.0,
                            kd_weight: float = 1.0, ce_weight: float = 0.0, vocab: int | None = None,
                            chunk: int | None = None, row_weight: torch.Tensor | None = None):
    """Summed `kd_weight * sum_t D(student_t, teacher_t) + ce_weight * sum_t CE_t` over rows whose
    label is not -100, with the student's logits = hidden @ weight.T computed chunk by chunk.

    hidden: (N, H) student last hidden states (already shifted: row t predicts labels[t]);
    weight: (V_s, H) student lm_head (tied embeddings: pass the embedding matrix);
    the teacher as (teacher_hidden (N, H_t), teacher_weight (V_t, H_t)) or teacher_logits (N, V_t);
    vocab: columns compared (the shared vocabulary; defaults to min of the two sizes);
    row_weight: (N,) optional per-row weights of both terms (token weights, advantages, gates; not
    differentiated; rows weighted 0 are skipped).
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
        labels, None if row_weight is None else row_weight.detach(), divergence, float(beta), float(alpha),
        float(temperature), float(kd_weight), float(ce_weight), int(vocab), int(chunk))


__all__ = ["default_chunk", "fused_linear_divergence"]

"""`tsd_kd`: Token-Selective Dual Knowledge Distillation (ICLR 2026, arXiv:2603.13260; repo
kmswin1/TSD-KD).

On-policy: the student samples (temperature 1, lmbda 1); on its rollouts, with H the per-token
entropy of the full distribution at tau = 1 and N the valid (completion) tokens:

    direct    w_t = sigmoid(H_S,t - H_T,t) (no gradient);  L_dir = sum_t w_t * JSD_beta(P_T,t || P_S,t)
    entropy   q = quantile_{valid t}(H_S,t, threshold);  m_t = 1[H_S,t >= q]
              L_ent = sum_t H_S,t m_t / sum_t m_t          (gradient through H_S; valid tokens only —
              the released code also counts padding, a bug not copied here)
    indirect  at each early position, the student's top-K tokens (K = 10) ordered by the teacher's
              logits, s = the student's logits in that order, centred:
              standard (default): ListMLE of the teacher's order, l_t = -sum_k [s_k - log sum_{j>=k} exp s_j]
              as_released: the released code's forward logcumsumexp, l_t = -sum_k [s_k - log sum_{j<=k} exp s_j],
              which is ListMLE of the *reversed* teacher order (descent lowers the teacher's favourite),
              kept behind `listmle_direction` to reproduce the paper
              "Early" = completion positions before d, the first index at which the cumulative share of
              the batch's (flattened) token entropy reaches `threshold` (as released), or per sequence.
    L = L_dir + entropy_weight * L_ent + alpha * L_ind

L_dir is summed over tokens and L_ent, L_ind are means, so in the loop's "sum, then divide by the
global token count" contract the two means enter multiplied by this micro-batch's token count.
Defaults from the released train.sh: beta 0.9, alpha 0.1, threshold 0.1, K 10. Both models'
logits at the completion positions are formed in full here (N x V; the entropies, the top-K and
the entropy gradient need them), not through the fused path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import param
from ..data.collate import IGNORE
from ...losses.divergences import generalized_jsd_logp
from .base import LossOut
from .distill import DivergenceConfig, default_of
from .hidden import last_hidden, unwrap
from .onpolicy import OnPolicy, RolloutConfig


def listmle(s: torch.Tensor, direction: str = "standard") -> torch.Tensor:
    """Per-row ListMLE loss of scores `s` (rows, K) already in the target order (best first),
    after centring. standard: -sum_k [s_k - logsumexp(s_k..s_K)] (Plackett-Luce NLL of that order);
    as_released: -sum_k [s_k - logsumexp(s_1..s_k)]."""
    s = s - s.mean(-1, keepdim=True)
    if direction == "standard":
        norm = torch.logcumsumexp(s.flip(-1), -1).flip(-1)
    elif direction == "as_released":
        norm = torch.logcumsumexp(s, -1)
    else:
        raise ValueError(f"listmle direction must be 'standard' or 'as_released', got {direction!r}")
    return -(s - norm).sum(-1)


def entropy_prefix(h: torch.Tensor, threshold: float) -> int:
    """Number of leading entries whose cumulative share of sum(h) first reaches `threshold` (>= 1)."""
    share = torch.cumsum(h / h.sum().clamp_min(1e-12), 0)
    hit = (share >= threshold).nonzero()
    return int(hit[0, 0]) + 1 if hit.numel() else int(h.numel())


class TSDKD(OnPolicy):
    """Rollouts of the student (`OnPolicy`) graded by the run's teacher with the three terms above,
    from both models' full logits at the completion positions."""

    name = "tsd_kd"
    paper = "TSD-KD: Token-Selective Dual Knowledge Distillation (ICLR 2026), arXiv:2603.13260"
    equation = ("L = sum_t sigmoid(H_S-H_T)_t JSD_beta(P_T||P_S)_t + L_ent(top-90% entropy tokens) "
                "+ alpha ListMLE(top-K)")

    @dataclass
    class Config(RolloutConfig):
        beta: float = default_of(DivergenceConfig, "beta", 0.9)
        alpha: float = param(0.1, "weight of the indirect (ranking) term", lo=0.0)
        entropy_weight: float = param(1.0, "weight of the entropy term (0: off)", lo=0.0)
        threshold: float = param(0.1, "entropy quantile of the entropy term, and entropy share of the early "
                                 "positions of the ranking term", lo=0.0, hi=1.0, lo_open=True)
        top_k: int = param(10, "student candidates re-ranked by the teacher", lo=2)
        weighting: str = param("soft", "direct-term token weights: soft sigmoid(H_S - H_T), hard 1[H_S > H_T], "
                               "or none (uniform: plain GKD)", choices=["soft", "hard", "none"])
        listmle_direction: str = param("standard", "standard ListMLE of the teacher's order, or as_released "
                                       "(the released code's reversed order)", choices=["standard", "as_released"])
        prefix: str = param("batch", "early positions for the ranking term: from the batch's flattened entropies "
                            "(as released) or per sequence", choices=["batch", "sequence"])

    def teacher_needs(self) -> tuple:
        return self.with_seq_kd({"hidden"})

    def loss(self, model, batch) -> LossOut:
        c = self.cfg
        teacher = self.teacher(model)  # its full logits, from its hidden states (teacher_needs)
        v = self.vocab
        labels = batch["labels"][:, 1:]
        sel = labels != IGNORE
        w_s = unwrap(model).get_output_embeddings().weight[:v]
        zs = last_hidden(model, batch)[:, :-1][sel] @ w_s.T.to(w_s.dtype)
        zs = zs.to(torch.promote_types(zs.dtype, torch.float32))  # at least float32; float64 kept
        with torch.no_grad():
            t_hidden, w_t = teacher.hidden(batch)
            zt = t_hidden[:, :-1][sel] @ w_t[:v].T
            zt = zt.to(torch.promote_types(zt.dtype, torch.float32))
        n = int(sel.sum())
        if n == 0:
            return LossOut(zs.sum() * 0.0, 0, dict(batch.get("stats", {})))
        ls1, lt1 = torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)
        h_s = -(ls1.exp() * ls1).sum(-1)
        h_t = -(lt1.exp() * lt1).sum(-1)
        if c.weighting == "soft":
            w = torch.sigmoid(h_s - h_t).detach()
        elif c.weighting == "hard":
            w = (h_s > h_t).float().detach()
        else:
            w = torch.ones_like(h_s)
        T = c.temperature
        ls, lt = (ls1, lt1) if T == 1.0 else (torch.log_softmax(zs / T, -1), torch.log_softmax(zt / T, -1))
        jsd = generalized_jsd_logp(ls, lt, c.beta)
        direct = (w * jsd).sum()

        hd = h_s.detach()
        q = torch.quantile(hd, c.threshold)
        m = (hd >= q).float()
        ent = (h_s * m).sum() / m.sum()

        # completion position of each valid token, for the "early positions" of the ranking term
        pos = (torch.cumsum(sel.long(), 1) - 1)[sel]
        if c.prefix == "batch":
            early = pos < entropy_prefix(hd, c.threshold)
        else:
            row = sel.nonzero()[:, 0]
            early = torch.zeros_like(pos, dtype=torch.bool)
            for b in row.unique():
                mine = row == b
                early[mine] = pos[mine] < entropy_prefix(hd[mine], c.threshold)
        k = min(c.top_k, zs.shape[-1])
        cand = zs[early].detach().topk(k, -1).indices
        order = zt[early].gather(1, cand).argsort(-1, descending=True)
        s = zs[early].gather(1, cand.gather(1, order))
        ind = listmle(s, c.listmle_direction).mean() if s.shape[0] else zs.sum() * 0.0

        loss = direct + n * (c.entropy_weight * ent + c.alpha * ind)
        metrics = {"direct": float(direct.detach()) / n, "entropy": float(ent.detach()), "ranking": float(ind.detach()),
                   "weight_mean": float(w.mean()), "early_share": float(early.float().mean())}
        metrics.update(batch.get("stats", {}))
        return LossOut(loss, n, metrics)

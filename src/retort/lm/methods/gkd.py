"""`gkd`: Generalized Knowledge Distillation (Agarwal et al. 2024, "On-Policy Distillation of
Language Models: Learning from Self-Generated Mistakes", arXiv:2306.13649).

With probability `lmbda` a micro-batch's completions are sampled by the current student (else the
data's, or the teacher's with `seq_kd`); the loss per completion token t is the `kd` loss on them:
    L_t = kd_weight * T^2 * D(P_S^T(. | x, y_<t) || P_T^T(. | x, y_<t)) + ce_weight * CE(y_t)
with D the generalized JSD (`beta` weights the teacher: 0 = forward KL, 1 = reverse KL) by
default, or any divergence of `kd`. The teacher runs online through the fused chunked loss.
`lmbda=0` is exactly `kd` on the same batches (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import param
from ...losses.divergences import DIVERGENCES
from .base import LossOut
from .kd import distill_tokens, sparse_topk_loss, teacher_topk_batch
from .onpolicy import OnPolicy, RolloutConfig


class GKD(OnPolicy):
    name = "gkd"
    paper = "Agarwal et al. 2024, On-Policy Distillation of Language Models (GKD), arXiv:2306.13649"
    equation = "y ~ p_S w.p. lmbda; L = sum_t kd_weight * T^2 * JSD_beta(P_T || P_S)_t + ce_weight * CE_t"

    @dataclass
    class Config(RolloutConfig):
        divergence: str = param("jsd", "per-token divergence", choices=list(DIVERGENCES))
        beta: float = param(0.5, "generalized JSD weight of the teacher (0: forward KL, 1: reverse KL)", lo=0.0, hi=1.0)
        alpha: float = param(0.1, "skew of skew_forward_kl / skew_reverse_kl", lo=0.0, hi=1.0, hi_open=True)
        t_squared: bool = param(True, "multiply the KD term by T^2 (Hinton)")
        kd_weight: float = param(1.0, "weight of the KD term (per-token nats)", lo=0.0)
        ce_weight: float = param(0.0, "weight of cross-entropy on the completion tokens (per-token nats)", lo=0.0)
        chunk: int = param(0, "rows per chunk of the fused loss (0: auto from the vocabulary size)", lo=0)
        topk: int = param(20, "with a teacher that scores but has no hidden states: the top-k per position the "
                          "sparse path learns from (at most what the teacher has)", lo=1)

    def teacher_needs(self) -> tuple:
        return self.with_seq_kd({"hidden"}, {"score"})

    def loss(self, model, batch) -> LossOut:
        teacher = self.teacher(model)
        if "hidden" in teacher.capabilities:
            out = distill_tokens(model, teacher, batch, self.cfg, self.vocab)
        else:  # a teacher that only scores: the sparse top-k path on the rollouts' scores
            k = min(self.cfg.topk, teacher.max_topk or self.cfg.topk)
            out = sparse_topk_loss(model, teacher_topk_batch(teacher, batch, k), self.cfg, len(self.ctx.tokenizer))
        out.metrics.update(batch.get("stats", {}))
        return out

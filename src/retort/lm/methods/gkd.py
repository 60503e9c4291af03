"""`gkd`: Generalized Knowledge Distillation (Agarwal et al. 2024, "On-Policy Distillation of
Language Models: Learning from Self-Generated Mistakes", arXiv:2306.13649).

With probability `lmbda` a micro-batch's completions are sampled by the current student (else the
data's, or the teacher's with `seq_kd`); the loss per completion token t is the `kd` loss on them:
    L_t = kd_weight * T^2 * D(P_S^T(. | x, y_<t) || P_T^T(. | x, y_<t)) + ce_weight * CE(y_t)
with D the generalized JSD (`beta` weights the teacher: 0 = forward KL, 1 = reverse KL) by
default, or any divergence of `kd`. The teacher runs online through the fused chunked loss.
`lmbda=0` is exactly `kd` on the same batches (tested). With `method_args.cross_tokenizer` the
student's rollouts are re-tokenised for a teacher with another tokenizer and distilled by
character-aligned spans (`retort.lm.methods.cross_tokenizer`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from .base import LossOut
from .cross_tokenizer import CrossTokenizerConfig, check_cross_config
from .distill import DivergenceConfig, TopkConfig, default_of, distill
from .onpolicy import OnPolicy, RolloutConfig


class GKD(OnPolicy):
    """Rollouts of the student (`OnPolicy`) distilled on with the loss of `kd`
    (`retort.lm.methods.distill.distill`)."""

    name = "gkd"
    paper = "Agarwal et al. 2024, On-Policy Distillation of Language Models (GKD), arXiv:2306.13649"
    equation = "y ~ p_S w.p. lmbda; L = sum_t kd_weight * T^2 * JSD_beta(P_T || P_S)_t + ce_weight * CE_t"

    @dataclass
    class Config(CrossTokenizerConfig, RolloutConfig, TopkConfig, DivergenceConfig):
        divergence: str = default_of(DivergenceConfig, "divergence", "jsd")

    def __init__(self, ctx, cfg):
        check_cross_config(cfg)
        if cfg.seq_kd and cfg.cross_tokenizer in ("uld", "hybrid"):
            raise ConfigError("method_args.seq_kd=true samples in the teacher's tokens; with "
                              f"method_args.cross_tokenizer={cfg.cross_tokenizer} it is not supported yet")
        super().__init__(ctx, cfg)
        self.run_teacher.mode = cfg.cross_tokenizer

    def teacher_needs(self) -> tuple:
        return self.with_seq_kd({"hidden"}, {"score"})

    def loss(self, model, batch) -> LossOut:
        out = distill(model, self.run_teacher, batch, self.cfg, student_vocab=len(self.ctx.tokenizer))
        out.metrics.update(batch.get("stats", {}))
        return out

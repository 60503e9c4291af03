"""`kd`: off-policy token-level knowledge distillation (Hinton et al. 2015, arXiv:1503.02531; the
divergence family of GKD, Agarwal et al. 2024, arXiv:2306.13649, and DistiLLM, arXiv:2402.03898).

Loss per completion token t, summed (the loop normalises by the global token count):
    L_t = kd_weight * T^2 * D(P_S^T(. | x, y_<t) || P_T^T(. | x, y_<t)) + ce_weight * CE(y_t)
with D one of forward_kl, reverse_kl, jsd (beta), skew_forward_kl / skew_reverse_kl (alpha), tvd,
and both distributions at temperature T. Scale: both terms are per-token means in nats, so they
are directly comparable (no hidden 1/V or 1/B factor: the failure of easydistill #34, where the
KD term ended up 100-1000x smaller than CE); T^2 (Hinton) keeps the KD gradient's size independent
of T. Both terms are logged (`kd`, `ce`, per token).

The data are those of `sft` (worked solutions, answers, or teacher traces); the teacher is run
online, and its logits never materialise: the fused chunked path takes its last hidden states and
lm_head (`retort.losses.fused`).

A teacher with another tokenizer (`method_args.cross_tokenizer=hybrid|uld|auto`) is distilled by
character-aligned spans with ULD or GOLD's hybrid instead (`retort.lm.methods.cross_tokenizer`),
online, or offline from the traces' top-k in the teacher's own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import param
from ...errors import ConfigError
from ..data.align import shared_vocab
from .base import LossOut, OffPolicy
from .cross_tokenizer import CrossTokenizerConfig, check_cross_config, cross_tokenizer_topk_loss
from .distill import DivergenceConfig, LazyTeacher, TopkConfig, distill, sparse_topk_loss
from .examples import data_examples, teacher_tokenizer, trace_examples


class KD(OffPolicy):
    """The data of `sft` (`data_examples`), the run's teacher (`LazyTeacher`, or its top-k stored in
    the traces with `teacher=offline`), and the loss of `retort.lm.methods.distill`."""

    name = "kd"
    paper = "Hinton et al. 2015, Distilling the Knowledge in a Neural Network, arXiv:1503.02531"
    equation = "L = sum_t kd_weight * T^2 * D(P_S^T || P_T^T)_t + ce_weight * CE_t"

    @dataclass
    class Config(CrossTokenizerConfig, TopkConfig, DivergenceConfig):
        temperature: float = param(1.0, "softmax temperature of both models", lo=0.0, lo_open=True)
        teacher: str = param("online", "online: run the teacher model; offline: its top-k log-probs stored in "
                             "the traces (data.source=traces, made with sampling.topk=K)", choices=["online", "offline"])
        tail: str = param("drop", "offline top-k: renormalise both over the k ids (drop), or keep the rest of "
                          "the mass as one extra bucket (bucket; needs temperature 1)", choices=["drop", "bucket"])

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        if cfg.kd_weight == 0 and cfg.ce_weight == 0:
            raise ConfigError("method_args: kd_weight and ce_weight are both 0; nothing to train")
        check_cross_config(cfg)
        self.run_teacher = LazyTeacher(ctx, cfg.cross_tokenizer)
        self.offline_teacher = None  # (tokenizer, shared pairs) of the traces' teacher, across tokenizers
        if cfg.teacher == "offline":
            if ctx.run.data.source != "traces":
                raise ConfigError("method_args.teacher=offline reads the teacher's top-k from traces: "
                                  "set data.source=traces data.traces=DIR")
            if cfg.tail == "bucket" and cfg.temperature != 1.0:
                raise ConfigError("method_args.tail=bucket needs method_args.temperature=1.0")

    def examples(self):
        if self.cfg.teacher == "offline":
            return trace_examples(self.ctx.run.data, self.ctx.tokenizer, with_topk=True, ctx=self.ctx,
                                  cross=self.cfg.cross_tokenizer)
        return data_examples(self.ctx)

    def teacher_needs(self) -> tuple:
        # offline reads the top-k from the data; online: the fused path, or the sparse one from scores
        return () if self.cfg.teacher == "offline" else ({"hidden"}, {"score"}, {"score_stored"})

    def loss(self, model, batch) -> LossOut:
        if self.cfg.teacher == "offline" and "teacher_ids" in batch:  # the top-k in the teacher's own tokens
            if self.offline_teacher is None:
                t_tok = teacher_tokenizer(self.ctx.run.data)
                self.offline_teacher = (t_tok, shared_vocab(self.ctx.tokenizer, t_tok))
            t_tok, shared = self.offline_teacher
            mode = self.cfg.cross_tokenizer if self.cfg.cross_tokenizer in ("uld", "hybrid") else "hybrid"
            return cross_tokenizer_topk_loss(model, batch, self.cfg, mode=mode, student_tok=self.ctx.tokenizer,
                                             teacher_tok=t_tok, shared=shared)
        if self.cfg.teacher == "offline":  # the top-k the traces hold, collated into the batch
            return sparse_topk_loss(model, batch, self.cfg, len(self.ctx.tokenizer))
        return distill(model, self.run_teacher, batch, self.cfg, student_vocab=len(self.ctx.tokenizer))

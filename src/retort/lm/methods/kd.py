"""`kd`: off-policy token-level knowledge distillation (Hinton et al. 2015, arXiv:1503.02531; the
divergence family of GKD, Agarwal et al. 2024, arXiv:2306.13649, and DistiLLM, arXiv:2402.03898).

Loss per completion token t, summed (the loop normalises by the global token count):
    L_t = kd_weight * T^2 * D(P_S^T(. | x, y_<t) || P_T^T(. | x, y_<t)) + ce_weight * CE(y_t)
with D one of forward_kl, reverse_kl, jsd (beta), skew_forward_kl / skew_reverse_kl (alpha), tvd,
and both distributions at temperature T. Scale: both terms are per-token means in nats, so they
are directly comparable (no hidden 1/V or 1/B factor: the failure of easydistill #34, where the
KD term ended up 100-1000x smaller than CE); T^2 (Hinton) keeps the KD gradient's size independent
of T. Both terms are logged (`kd`, `ce`, per token).

Hidden-state KD (`method_args.hidden`: layer pairs STUDENT:TEACHER, e.g. `1:4,2:8`) adds, per token,
    hidden_weight * mean_pairs loss(P_i h_S^{s_i}, h_T^{t_i})        (loss: mse or cosine)
matching intermediate states (DistillKit's hidden-state alignment; FitNets, arXiv:1412.6550, for
the learned map). P_i is a linear projection student width -> teacher width the method owns (module
`hidden_proj`: its own optimizer, in every checkpoint) where the widths differ, the identity where
they agree. It needs the teacher model online (a local model); with kd_weight=0 it is the only
teacher term. Layer indices are those of transformers' `output_hidden_states` (0: embeddings, L:
the final normed states), checked against both models before step 0 (`retort.lm.methods.hidden`).

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
from .base import LossOut, OffPolicy, Owned
from .cross_tokenizer import CrossTokenizerConfig, check_cross_config, cross_tokenizer_topk_loss
from .distill import DivergenceConfig, LazyTeacher, TopkConfig, distill, distill_hidden, sparse_topk_loss
from .examples import data_examples, teacher_tokenizer, trace_examples
from .hidden import HIDDEN_LOSSES, LayerProjections, check_layer_pairs, parse_layer_pairs


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
        hidden: str = param("", "hidden-state KD: layer pairs STUDENT:TEACHER, comma-separated (e.g. 1:4,2:8; a "
                            "single pair with a trailing comma, 1:4,); indices as output_hidden_states (0: "
                            "embeddings, L: final normed states); empty: none. Needs teacher=online")
        hidden_loss: str = param("mse", "hidden-state KD loss per token and pair, through a learned projection "
                                 "where the widths differ", choices=list(HIDDEN_LOSSES))
        hidden_weight: float = param(1.0, "weight of the hidden-state term (per token, mean over the pairs)", lo=0.0)
        hidden_lr: float = param(0.0, "learning rate of the hidden-state projection (0: train.lr)", lo=0.0)

        def __post_init__(self):
            if self.hidden:
                try:
                    parse_layer_pairs(self.hidden)
                except ValueError as e:
                    raise ConfigError(f"method_args.hidden={self.hidden!r}: {e}") from None

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self.pairs = parse_layer_pairs(cfg.hidden) if cfg.hidden else []
        if cfg.kd_weight == 0 and cfg.ce_weight == 0 and not (self.pairs and cfg.hidden_weight):
            raise ConfigError("method_args: kd_weight and ce_weight are both 0 (and no hidden-state term); "
                              "nothing to train")
        if self.pairs and cfg.teacher == "offline":
            raise ConfigError("method_args.hidden needs the teacher's hidden states: teacher=online (a local "
                              "model), not offline traces")
        if self.pairs and cfg.cross_tokenizer != "off":
            raise ConfigError(f"method_args.hidden with cross_tokenizer={cfg.cross_tokenizer}: hidden-state pairs "
                              "match the two models token by token, which needs one tokenizer; use one or the other")
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

    def owned(self) -> dict:
        """`hidden_proj` (one projection per layer pair) where hidden-state KD is on and the widths
        differ; checks the pairs against both models first (the teacher is opened here, before step 0)."""
        if not self.pairs:
            return {}
        student = self.student()
        teacher = self.run_teacher.open(student)
        s_cfg, t_cfg = _text_config(student), _text_config(teacher.model)
        wrong = check_layer_pairs(self.pairs, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
        if wrong:
            raise ConfigError(f"method_args.hidden={self.cfg.hidden!r}: {wrong[0]}")
        if s_cfg.hidden_size == t_cfg.hidden_size:
            return {}
        proj = LayerProjections(len(self.pairs), s_cfg.hidden_size, t_cfg.hidden_size, seed=self.ctx.run.seed)
        return {"hidden_proj": Owned(proj, lr=self.cfg.hidden_lr or None)}

    def teacher_needs(self) -> tuple:
        if self.pairs:
            return ({"hidden"},)
        # offline reads the top-k from the data; online: the fused path, or the sparse one from scores
        return () if self.cfg.teacher == "offline" else ({"hidden"}, {"score"}, {"score_stored"})

    def private_records(self) -> int:
        """Under DP-SGD: the online teacher on the student's tokenizer, through the student's full
        logits (`distill_logits`); the offline top-k, cross-tokenizer and hidden-state paths are refused."""
        what = ("method_args.teacher=offline" if self.cfg.teacher == "offline" else
                f"method_args.cross_tokenizer={self.cfg.cross_tokenizer}" if self.cfg.cross_tokenizer != "off" else
                "method_args.hidden" if self.pairs else None)
        if what:
            raise ConfigError(f"privacy.*: kd with {what} cannot train under DP-SGD (its loss reads the student's "
                              "output layer outside the module Opacus hooks); use the online teacher alone")
        return super().private_records()

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
        if self.pairs:
            return distill_hidden(model, self.run_teacher, batch, self.cfg, self.pairs,
                                  project=self.owned_modules.get("hidden_proj"))
        return distill(model, self.run_teacher, batch, self.cfg, student_vocab=len(self.ctx.tokenizer))


def _text_config(model):
    """The decoder's config (a multimodal model keeps it under `text_config`)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "text_config", None) or cfg

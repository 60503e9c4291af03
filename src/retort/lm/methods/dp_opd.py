"""`dp_opd`: Differentially Private On-Policy Distillation (arXiv:2604.04461; the authors' code is
announced, not released: every detail below the paper's algorithm is ours, methods/llm.md §15).

Only the student is private: it trains under DP-SGD (`privacy.*`, Opacus, `retort.train.private`);
the teacher is frozen and never wrapped. For each private record i that step's Poisson draw holds
(a row of the data, its prompt and its text, e.g. a note of `retort.lm.data.notes`), the prefix x_i
is the prompt and the first `prefix_tokens` tokens of the text, the reference continuation the
rest. With probability `lmbda` (drawn per record from the run seed, the step and the record, so a
resumed run draws the same) the continuation y_i is sampled now from the student given x_i (at
most `max_new_tokens`); otherwise it is the reference. The per-record loss on y_i's tokens is
    l_i = (1/|y_i|) * sum_t [ kd_weight * T^2 * JSD_beta(P_T,t || P_S,t) + ce_weight * CE(y_t) ]
(`record_mean=false`: the sum, not the mean), with the teacher's and the student's full logits
(the fused chunked loss reads the output layer's weight outside Opacus's hooks, so it cannot
serve here). The step's loss is sum_i l_i; the DPOptimizer clips each record's gradient to
`privacy.max_grad_norm`, adds the noise and divides by the expected batch.

Why a method of its own and not `gkd` + `privacy.*`: gkd decides on-policy per micro-batch of a
fixed, length-bucketed order, and its loss is a token sum; DP-OPD's unit is one record drawn by
Poisson sampling, its on-policy choice and its prefix/continuation split are per record, and its
loss a per-record mean. gkd under `privacy.*` is refused with a pointer here.

`lmbda=0` with `prefix_tokens=0` and `record_mean=false` is off-policy DP-KD (`kd` + `privacy.*`)
on the same records, exactly (tested); the paper's two baselines are `kd` and `sft` with
`privacy.*` on the same data (README, Privacy).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch

from ...config import param
from ...errors import ConfigError
from ...losses.divergences import DIVERGENCES
from ..data.collate import IGNORE, Encoded, collate
from .base import LossOut, OffPolicy
from .distill import DivergenceConfig, LazyTeacher, default_of, private_run
from .examples import data_examples
from .onpolicy import Rollouts


class DPOPD(OffPolicy):
    """Private records split into prefix and continuation, continued by the student w.p. `lmbda`,
    distilled per record (module docstring)."""

    name = "dp_opd"
    paper = "Differentially Private On-Policy Distillation (DP-OPD), arXiv:2604.04461"
    equation = ("y_i ~ p_S(.|x_i) w.p. lmbda else the reference; l_i = mean_t kd_weight * T^2 * JSD_beta(P_T || P_S)_t "
                "+ ce_weight * CE_t; DP-SGD on sum_i l_i")

    @dataclass
    class Config(DivergenceConfig):
        divergence: str = default_of(DivergenceConfig, "divergence", "jsd")
        lmbda: float = param(0.5, "probability that a record's continuation is sampled now from the student "
                             "(else the record's own)", lo=0.0, hi=1.0)
        prefix_tokens: int = param(16, "tokens of the record's text (after its prompt) in the prefix the "
                                   "continuation follows; at least one token is always left to continue", lo=0)
        max_new_tokens: int = param(64, "longest sampled continuation", lo=1)
        temperature: float = param(1.0, "temperature of the sampled continuations and of both distributions in "
                                   "the loss", lo=0.0, lo_open=True)
        top_p: float = param(1.0, "nucleus sampling of the continuations", lo=0.0, hi=1.0, lo_open=True)
        record_mean: bool = param(True, "each record's loss is its mean over its continuation tokens (the "
                                  "paper's l_i); false: their sum (kd's and sft's unit under privacy.*)")
        engine: str = param("auto", "rollout engine (as gkd's): auto, fast or hf", choices=["auto", "fast", "hf"])

    def __init__(self, ctx, cfg):
        if not private_run(ctx):
            raise ConfigError("method=dp_opd trains under DP-SGD: set privacy.target_epsilon (or "
                              "privacy.noise_multiplier); without privacy use method=gkd")
        if cfg.kd_weight == 0 and cfg.ce_weight == 0:
            raise ConfigError("method_args: kd_weight and ce_weight are both 0; nothing to train")
        super().__init__(ctx, cfg)
        self.run_teacher = LazyTeacher(ctx)
        # the rollout machinery of the on-policy methods, for the student's continuations only
        rollout_cfg = _RolloutFields(temperature=cfg.temperature, top_p=cfg.top_p,
                                     max_new_tokens=cfg.max_new_tokens, engine=cfg.engine)
        self.rollouts = Rollouts(ctx, rollout_cfg, teacher=None, step=lambda: self.step)

    def teacher_needs(self) -> tuple:
        return ({"hidden"},)

    def examples(self) -> list[Encoded]:
        data = data_examples(self.ctx)
        if any(x.multi_turn for x in data):
            raise ConfigError("method=dp_opd continues one text per record; the data has multi-turn rows (messages)")
        return data

    def batches(self, plan):
        raise ConfigError("method=dp_opd draws its records by Poisson sampling under privacy.*")

    def split(self, record: Encoded) -> Encoded:
        """The record with its prefix (prompt + `prefix_tokens` of its text) masked: the reference
        continuation is what keeps labels."""
        start = record.prompt_len
        cut = min(start + self.cfg.prefix_tokens, len(record.input_ids) - 1)
        labels = [IGNORE] * cut + list(record.labels[cut:])
        return replace(record, labels=labels, topk_ids=None, topk_logprobs=None)

    def on_policy(self, index: int) -> bool:
        rng = random.Random(f"{self.ctx.run.seed}:dp_opd:{self.step}:{index}")
        return rng.random() < self.cfg.lmbda

    def records_batch(self, rows: torch.Tensor) -> dict:
        records = self._records()
        items, sampled = [], []
        for i in rows.tolist():
            item = self.split(records[i])
            if self.on_policy(i):
                sampled.append(len(items))
            items.append(item)
        stats = {"on_policy": len(sampled) / len(items)}
        if sampled:
            seed = random.Random(f"{self.ctx.run.seed}:dp_opd:rollout:{self.step}:{rows.tolist()}").randrange(2 ** 31)
            new, more = self.rollouts.rollout([items[j] for j in sampled], self.ctx.student(), seed=seed, gate=False)
            for j, x in zip(sampled, new):
                items[j] = self.cut_at_pad(x)
            stats["rollout_tokens"] = more["rollout_tokens"]
        batch = collate(items, self.ctx.tokenizer.pad_token_id)
        batch["stats"] = stats
        return batch

    def cut_at_pad(self, item: Encoded) -> Encoded:
        """A sampled continuation ends before its first padding token: the pad id is not text, and
        Opacus's per-sample embedding gradient, unlike autograd's, does not zero the padding row, so
        a sampled pad token would leave the per-record gradients off their sum (refused at step 0)."""
        pad = self.ctx.tokenizer.pad_token_id
        start = item.prompt_len
        ids = item.input_ids
        cut = next((t for t in range(start, len(ids)) if ids[t] == pad), len(ids))
        return item if cut == len(ids) else replace(item, input_ids=ids[:max(cut, 1)], labels=item.labels[:max(cut, 1)])

    def count(self, batch: dict) -> int:
        """Records (each one term of the loss)."""
        return int(batch["labels"].shape[0])

    def loss(self, model, batch) -> LossOut:
        teacher = self.run_teacher.open(model)
        per_record, kd, ce, tokens = record_losses(model, teacher, batch, self.cfg, self.run_teacher.vocab)
        if self.cfg.record_mean:
            per_record = per_record / tokens.clamp(min=1)
        n = int(tokens.sum())
        return LossOut(per_record.sum(), int(tokens.shape[0]),
                       {"kd": float(kd) / max(1, n), "ce": float(ce) / max(1, n), **batch.get("stats", {})})


@dataclass
class _RolloutFields:
    """The fields `Rollouts.rollout` reads, from dp_opd's config."""

    temperature: float
    top_p: float
    max_new_tokens: int
    engine: str
    gate: bool = False
    rollout_dtype: str = "model"


def record_losses(model, teacher, batch, c, vocab) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per record of `batch` (B rows): the summed loss over its label tokens
        sum_t kd_weight * T^2 * D(P_S^T || P_T^T)_t + ce_weight * CE(y_t)
    from both models' full logits (student: `(B, L, V)` through its output layer as a module, so
    Opacus's hooks see it), with the summed kd and ce terms over the batch and each row's token
    count `(B,)`. `c` a `DivergenceConfig` with a `temperature`; `vocab` the shared columns."""
    labels = batch["labels"][:, 1:]
    sel = labels != IGNORE
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    with torch.no_grad():
        t_hidden, t_weight = teacher.hidden(batch)
        t_logits = t_hidden[:, :-1].float() @ t_weight.float().T
    cols = vocab or min(logits.shape[-1], t_logits.shape[-1])
    z, zt = logits[..., :cols].float(), t_logits[..., :cols].float()
    T = c.temperature
    fn = DIVERGENCES[c.divergence]
    extra = (c.beta,) if c.divergence == "jsd" else (c.alpha,) if c.divergence.startswith("skew") else ()
    div = fn(torch.log_softmax(z / T, -1), torch.log_softmax(zt / T, -1), *extra) * sel
    kd = div.sum(-1)
    if c.ce_weight:
        ce = torch.nn.functional.cross_entropy(z.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                               reduction="none").view(labels.shape).sum(-1)
    else:
        ce = torch.zeros_like(kd)
    scale = T ** 2 if c.t_squared else 1.0
    return (c.kd_weight * scale * kd + c.ce_weight * ce, kd.detach().sum(), ce.detach().sum(), sel.sum(-1))


__all__ = ["DPOPD", "record_losses"]

"""Token-level distillation from a teacher, shared by `kd`, `gkd` and `opsd` (and the teacher of
`tsd_kd` and `rkl_pg`):

- `DivergenceConfig`: the divergence fields of their `method_args`, declared once (each method's
  `Config` inherits them and overrides a default where its paper's differs, `default_of`);
- `LazyTeacher`: the run's teacher, opened on first use and its vocabulary checked against the
  student's (the number of shared columns, `vocab`), owned by the method that uses it;
- the loss on given tokens, summed over the label tokens of the batch:
    L_t = kd_weight * T^2 * D(P_S^T(. | x, y_<t) || P_T^T(. | x, y_<t)) + ce_weight * CE(y_t)
  through the fused chunked path when the teacher has hidden states (`distill_tokens`: the logits
  never materialise), else the sparse path on the teacher's top-k (`sparse_topk_loss`, from traces
  or from `teacher_topk_batch`); `distill` picks between them;
- hidden-state KD at chosen layer pairs, alone or with that loss (`distill_hidden`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import param
from ...errors import ConfigError, ModelError
from ...losses.divergences import DIVERGENCES
from ...losses.fused import fused_linear_divergence
from ..data.collate import IGNORE
from ..models import check_vocab
from .base import LossOut
from .cross_tokenizer import cross_tokenizer_loss, cross_tokenizer_scored_loss
from .hidden import HIDDEN_LOSSES, all_hidden, hidden_state_loss, last_hidden, unwrap


@dataclass
class DivergenceConfig:
    """What the divergence between the two token distributions is and how its term is weighed."""

    divergence: str = param("forward_kl", "per-token divergence", choices=list(DIVERGENCES))
    beta: float = param(0.5, "generalized JSD weight of the teacher (0: forward KL, 1: reverse KL)", lo=0.0, hi=1.0)
    alpha: float = param(0.1, "skew of skew_forward_kl / skew_reverse_kl", lo=0.0, hi=1.0, hi_open=True)
    t_squared: bool = param(True, "multiply the KD term by T^2 (Hinton) so its gradient size does not depend on T")
    kd_weight: float = param(1.0, "weight of the KD term (per-token nats)", lo=0.0)
    ce_weight: float = param(0.0, "weight of cross-entropy on the label tokens: the data's, or the rollouts' "
                             "(per-token nats)", lo=0.0)
    chunk: int = param(0, "rows per chunk of the fused loss (0: auto from the vocabulary size)", lo=0)


@dataclass
class TopkConfig:
    """The sparse path's width, for a teacher that scores but has no hidden states."""

    topk: int = param(20, "with a teacher that scores but has no hidden states (teacher.name=traces:DIR, a "
                      "server): the top-k per position the sparse path learns from (at most what the teacher has)",
                      lo=1)


def default_of(config, name: str, default, doc: str | None = None, **bounds):
    """The field `name` of dataclass `config` as declared there, with another default (and, given,
    another doc or bounds): a method's override of a shared field."""
    meta = {**config.__dataclass_fields__[name].metadata, **bounds}
    return param(default, doc or meta["doc"], lo=meta["lo"], hi=meta["hi"], lo_open=meta["lo_open"],
                 hi_open=meta["hi_open"], choices=meta["choices"])


class LazyTeacher:
    """The run's `Teacher` (retort.lm.teachers), opened on first use. `vocab` is then the number of
    vocabulary columns it shares with the student (checked by `retort.lm.models.check_vocab`), or
    None for a teacher without a tokenizer.

    `cross_tokenizer` (`retort.lm.methods.cross_tokenizer`): uld | hybrid takes the cross-tokenizer
    path whatever the two vocabularies; auto takes hybrid only when they differ; off refuses a
    mismatch (naming the option). `cross` is then the loss taken (None: the same-tokenizer one) and
    `shared` hybrid's (student id, teacher id) pairs."""

    def __init__(self, ctx, cross_tokenizer: str = "off"):
        self.ctx = ctx
        self.teacher = None
        self.vocab = None
        self.mode = cross_tokenizer
        self.cross = None
        self.shared = None

    def open(self, model):
        """The teacher; `model` is the student (for the vocabulary check on first use)."""
        if self.teacher is None:
            teacher = self.ctx.load_teacher()
            if teacher.tokenizer is not None:
                t_model = getattr(teacher, "model", None)
                s_tok, t_tok = self.ctx.tokenizer, teacher.tokenizer
                differ = s_tok.get_vocab() != t_tok.get_vocab()
                self.cross = {"uld": "uld", "hybrid": "hybrid", "auto": "hybrid" if differ else None}.get(self.mode)
                if self.cross is None:
                    hint = ("; kd and gkd distill across tokenizers with method_args.cross_tokenizer=hybrid "
                            "(or uld, or auto)") if self.mode == "off" else ""
                    self.vocab = check_vocab(s_tok, t_tok, unwrap(model), t_model, hint=hint).size
                else:
                    if not {"hidden", "score"} & teacher.capabilities:
                        raise ModelError(f"method_args.cross_tokenizer={self.mode} needs a teacher that scores any "
                                         f"text (a model, or a server); teacher {teacher.name} ({teacher.kind}) "
                                         "scores only its own traces: use method_args.teacher=offline")
                    if self.cross == "hybrid":
                        from ..data.align import shared_vocab

                        self.shared = shared_vocab(s_tok, t_tok)
            self.teacher = teacher
        return self.teacher


def teacher_topk_batch(teacher, batch, k: int) -> dict:
    """`topk_ids`, `topk_logprobs`, `has_teacher` for `batch` from `teacher.score` (a teacher with no
    hidden states: a trace store, a server): the sparse top-k path's inputs, as offline traces give."""
    labels = batch["labels"]
    prompts, completions, where = [], [], []
    for i in range(labels.shape[0]):
        pos = (labels[i] != IGNORE).nonzero().squeeze(-1)
        if pos.numel() == 0:
            continue
        prompts.append(batch["input_ids"][i, :int(pos[0])].tolist())
        completions.append(labels[i, pos].tolist())
        where.append((i, pos))
    b, t = labels.shape
    ids = torch.zeros((b, t, k), dtype=torch.long)
    lps = torch.full((b, t, k), -1e4, dtype=torch.float32)
    has = torch.zeros((b, t), dtype=torch.bool)
    for (i, pos), sc in zip(where, teacher.score(prompts, completions, topk=k)):
        # a teacher may cover fewer positions than asked (an API trace with no row for the EOS
        # step, or a row cut to fewer than k entries): those get no teacher term
        n = len(sc.topk_ids)
        kk = min([len(r) for r in sc.topk_ids] or [k])
        if n and kk:
            ids[i, pos[:n], :kk] = torch.as_tensor(sc.topk_ids, dtype=torch.long)[:, :kk]
            lps[i, pos[:n], :kk] = torch.as_tensor(sc.topk_logprobs, dtype=torch.float32)[:, :kk]
            has[i, pos[:n]] = True
    device = labels.device
    return {**batch, "topk_ids": ids.to(device), "topk_logprobs": lps.to(device), "has_teacher": has.to(device)}


def distill_tokens(model, teacher, batch, c, vocab, *, teacher_batch=None, row_weight=None, states=None) -> LossOut:
    """The fused divergence (+ CE) between the student on `batch` and the teacher (a `Teacher` with
    hidden states) on `teacher_batch` (default: the same ids) at the label positions of each, in
    order — the two may differ in their prompts (OPSD's privileged context) but must label the same
    completion tokens. `c` is a `DivergenceConfig` with a `temperature`. `states`: the two models'
    last hidden states and the teacher's lm_head weight, where the caller has run both already."""
    labels = batch["labels"][:, 1:]
    sel = labels != IGNORE
    tb = batch if teacher_batch is None else teacher_batch
    t_sel = tb["labels"][:, 1:] != IGNORE
    if states is not None:
        hidden, t_hidden, t_weight = states
    else:
        hidden = last_hidden(model, batch)
        with torch.no_grad():
            t_hidden, t_weight = teacher.hidden(tb)
    hidden = hidden[:, :-1][sel]
    with torch.no_grad():
        t_hidden = t_hidden[:, :-1][t_sel]
    if t_hidden.shape[0] != hidden.shape[0]:
        raise ValueError(f"teacher batch labels {t_hidden.shape[0]} tokens, the student's {hidden.shape[0]}")
    scale = c.temperature ** 2 if c.t_squared else 1.0
    loss, kd, ce = fused_linear_divergence(
        hidden, unwrap(model).get_output_embeddings().weight, labels[sel], teacher_hidden=t_hidden,
        teacher_weight=t_weight, divergence=c.divergence, beta=c.beta,
        alpha=c.alpha, temperature=c.temperature, kd_weight=c.kd_weight * scale, ce_weight=c.ce_weight,
        vocab=vocab, chunk=c.chunk or None, row_weight=None if row_weight is None else row_weight[sel])
    n = int(sel.sum())
    return LossOut(loss, n, {"kd": float(kd) / max(1, n), "ce": float(ce) / max(1, n)})


def distill_logits(model, teacher, batch, c, vocab) -> LossOut:
    """The loss of `distill_tokens` from the student's full logits, its output layer called as a
    module: the path under DP-SGD (`privacy.*`), where Opacus's per-sample gradient hooks must see
    every use of the student's weights, and the fused path reads the output layer's weight
    directly. Costs the (tokens x vocabulary) logits the fused path avoids."""
    labels = batch["labels"][:, 1:]
    sel = labels != IGNORE
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][sel]
    with torch.no_grad():
        t_hidden, t_weight = teacher.hidden(batch)
        t_logits = t_hidden[:, :-1][sel].float() @ t_weight.float().T
    cols = vocab or min(logits.shape[-1], t_logits.shape[-1])
    z, zt = logits[:, :cols].float(), t_logits[:, :cols]
    T = c.temperature
    fn = DIVERGENCES[c.divergence]
    extra = (c.beta,) if c.divergence == "jsd" else (c.alpha,) if c.divergence.startswith("skew") else ()
    kd = fn(torch.log_softmax(z / T, -1), torch.log_softmax(zt / T, -1), *extra).sum()
    ce = torch.nn.functional.cross_entropy(z, labels[sel], reduction="sum") if c.ce_weight else z.new_zeros(())
    scale = T ** 2 if c.t_squared else 1.0
    n = int(sel.sum())
    return LossOut(c.kd_weight * scale * kd + c.ce_weight * ce, n,
                   {"kd": float(kd.detach()) / max(1, n), "ce": float(ce.detach()) / max(1, n)})


def private_run(ctx) -> bool:
    """Whether the run trains under DP-SGD (`privacy.*`); a context without a run (a loss called
    outside the loop) is not private."""
    cfg = getattr(getattr(ctx, "run", None), "privacy", None)
    return bool(cfg is not None and cfg.enabled)


def sparse_topk_loss(model, batch, c, vocab: int) -> LossOut:
    """KD against a teacher's top-k (`topk_ids`, `topk_logprobs`, `has_teacher` in the batch: stored
    in traces, or from `teacher_topk_batch`). Student logits are formed chunk by chunk and
    recomputed in backward (activation checkpointing), so memory stays at one chunk's logits."""
    from torch.utils.checkpoint import checkpoint

    from ...losses.divergences import sparse_teacher_logprobs

    labels = batch["labels"][:, 1:].reshape(-1)
    hidden = last_hidden(model, batch)[:, :-1]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    k = batch["topk_ids"].shape[-1]
    ids = batch["topk_ids"][:, 1:].reshape(-1, k)
    lps = batch["topk_logprobs"][:, 1:].reshape(-1, k)
    has = batch["has_teacher"][:, 1:].reshape(-1)
    weight = unwrap(model).get_output_embeddings().weight
    fn = DIVERGENCES[c.divergence]
    extra = (c.beta,) if c.divergence == "jsd" else (c.alpha,) if c.divergence.startswith("skew") else ()
    scale = c.kd_weight * (c.temperature ** 2 if c.t_squared else 1.0)

    def chunk_loss(h, w, ids_c, lps_c, has_c, lab_c):
        z = (h @ w[:vocab].T).float()
        ls, lt = sparse_teacher_logprobs(z, ids_c, lps_c, tail=getattr(c, "tail", "drop"), temperature=c.temperature)
        kd = torch.where(has_c, fn(ls, lt, *extra), torch.zeros_like(has_c, dtype=z.dtype)).sum()
        ce = torch.nn.functional.cross_entropy(z, lab_c, reduction="sum") if c.ce_weight else z.new_zeros(())
        return scale * kd + c.ce_weight * ce, kd.detach(), ce.detach()

    rows = (labels != IGNORE).nonzero().squeeze(-1)
    step = c.chunk or max(8, (1 << 22) // max(1, vocab))
    loss = hidden.new_zeros((), dtype=torch.float32)
    kd_sum = ce_sum = 0.0
    for start in range(0, rows.numel(), step):
        r = rows[start:start + step]
        part, kd, ce = checkpoint(chunk_loss, hidden[r], weight, ids[r], lps[r], has[r], labels[r],
                                  use_reentrant=False)
        loss = loss + part
        kd_sum += float(kd)
        ce_sum += float(ce)
    n = int(rows.numel())
    return LossOut(loss, n, {"kd": kd_sum / max(1, n), "ce": ce_sum / max(1, n)})


def distill(model, teacher: LazyTeacher, batch, c, *, student_vocab: int) -> LossOut:
    """The loss on the batch's label tokens against the run's teacher: the fused path when it has
    hidden states; otherwise the sparse top-k path on its scores of the batch's completions (at
    most `c.topk` per position, and at most what the teacher has: a trace store, what it stored).
    `student_vocab` is the student tokenizer's size (the sparse path's logit columns)."""
    t = teacher.open(model)
    if private_run(teacher.ctx):
        if teacher.cross is not None or "hidden" not in t.capabilities:
            raise ConfigError(f"privacy.*: kd under DP-SGD needs a local teacher model with the student's tokenizer "
                              f"(its logits on the batch); teacher {t.name} ({t.kind}) has none")
        return distill_logits(model, t, batch, c, teacher.vocab)
    if teacher.cross is not None and "hidden" in t.capabilities:
        return cross_tokenizer_loss(model, t, batch, c, mode=teacher.cross, student_tok=teacher.ctx.tokenizer,
                                    shared=teacher.shared)
    if teacher.cross is not None:
        return cross_tokenizer_scored_loss(model, t, batch, c, mode=teacher.cross, student_tok=teacher.ctx.tokenizer,
                                           shared=teacher.shared, k=min(c.topk, t.max_topk or c.topk))
    if "hidden" in t.capabilities:
        return distill_tokens(model, t, batch, c, teacher.vocab)
    k = min(c.topk, t.max_topk or c.topk)
    return sparse_topk_loss(model, teacher_topk_batch(t, batch, k), c, student_vocab)


def distill_hidden(model, teacher: LazyTeacher, batch, c, pairs, *, project=None) -> LossOut:
    """Hidden-state KD at `pairs` (student layer, teacher layer; `retort.lm.methods.hidden`) plus,
    where `c.kd_weight` or `c.ce_weight` is set, the token-level loss of `distill_tokens`, from one
    forward pass of each model (the teacher a local model with hidden states):
        L_t = hidden_weight * mean_pairs loss(P_i h_S^{s_i}, h_T^{t_i}) + (the `distill_tokens` terms)
    `c` a `DivergenceConfig` with `temperature`, `hidden_loss` and `hidden_weight`; `project(states, i)`
    the owned projection of pair i, None where the widths agree."""
    t = teacher.open(model)
    s_states = all_hidden(model, batch)
    with torch.no_grad():
        t_states = all_hidden(t, batch)
    sel = batch["labels"][:, 1:] != IGNORE
    h = hidden_state_loss(s_states, t_states, pairs, sel, HIDDEN_LOSSES[c.hidden_loss], project)
    if c.kd_weight or c.ce_weight:
        t_weight = unwrap(t.model).get_output_embeddings().weight
        out = distill_tokens(model, t, batch, c, teacher.vocab, states=(s_states[-1], t_states[-1], t_weight))
    else:
        out = LossOut(h.new_zeros(()), int(sel.sum()), {})
    n = out.count
    return LossOut(out.loss + c.hidden_weight * h, n, {**out.metrics, "hidden": float(h.detach()) / max(1, n)})


__all__ = ["DivergenceConfig", "LazyTeacher", "TopkConfig", "default_of", "distill", "distill_hidden",
           "distill_logits", "distill_tokens", "private_run", "sparse_topk_loss", "teacher_topk_batch"]

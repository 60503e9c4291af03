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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ...config import param
from ...losses.divergences import DIVERGENCES
from ...losses.fused import fused_linear_divergence
from ..models import check_vocab
from ..data.collate import IGNORE
from .base import LossOut
from .sft import SFT


def last_hidden(model, batch):
    """Final (normed) hidden states through the model's own forward (so DDP hooks run), with
    logits computed for the last position only."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                logits_to_keep=1)
    return out.hidden_states[-1]


def unwrap(model):
    return getattr(model, "module", model)


def load_teacher_once(method, model):
    """The method's `Teacher` (retort.lm.teachers), opened on first use, with its vocabulary checked
    against the student's (`method.vocab` is then the number of shared columns)."""
    if getattr(method, "_teacher", None) is None:
        teacher = method.ctx.load_teacher()
        if teacher.tokenizer is not None:
            t_model = getattr(teacher, "model", None)
            method.vocab = check_vocab(method.ctx.tokenizer, teacher.tokenizer, unwrap(model), t_model).size
        method._teacher = teacher
    return method._teacher


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


def distill_tokens(model, teacher, batch, c, vocab, *, teacher_batch=None, row_weight=None) -> LossOut:
    """The fused divergence (+ CE) between the student on `batch` and the teacher (a `Teacher` with
    hidden states) on `teacher_batch` (default: the same ids) at the label positions of each, in
    order — the two may differ in their prompts (OPSD's privileged context) but must label the same
    completion tokens.
    `c` has divergence, beta, alpha, temperature, t_squared, kd_weight, ce_weight, chunk."""
    labels = batch["labels"][:, 1:]
    sel = labels != IGNORE
    hidden = last_hidden(model, batch)[:, :-1][sel]
    tb = batch if teacher_batch is None else teacher_batch
    t_sel = tb["labels"][:, 1:] != IGNORE
    with torch.no_grad():
        t_hidden, t_weight = teacher.hidden(tb)
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


def sparse_topk_loss(model, batch, c, vocab: int) -> LossOut:
    """KD against a teacher's top-k (`topk_ids`, `topk_logprobs`, `has_teacher` in the batch: stored
    in traces, or from `teacher_topk_batch`). Student logits are formed chunk by chunk and
    recomputed in backward (activation checkpointing), so memory stays at one chunk's logits."""
    from torch.utils.checkpoint import checkpoint

    from ...losses.divergences import DIVERGENCES, sparse_teacher_logprobs

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


class KD(SFT):
    name = "kd"
    paper = "Hinton et al. 2015, Distilling the Knowledge in a Neural Network, arXiv:1503.02531"
    equation = "L = sum_t kd_weight * T^2 * D(P_S^T || P_T^T)_t + ce_weight * CE_t"

    @dataclass
    class Config:
        divergence: str = param("forward_kl", "per-token divergence", choices=list(DIVERGENCES))
        beta: float = param(0.5, "generalized JSD weight of the teacher (0: forward KL, 1: reverse KL)", lo=0.0, hi=1.0)
        alpha: float = param(0.1, "skew of skew_forward_kl / skew_reverse_kl", lo=0.0, hi=1.0, hi_open=True)
        temperature: float = param(1.0, "softmax temperature of both models", lo=0.0, lo_open=True)
        t_squared: bool = param(True, "multiply the KD term by T^2 (Hinton) so its gradient size does not depend on T")
        kd_weight: float = param(1.0, "weight of the KD term (per-token nats)", lo=0.0)
        ce_weight: float = param(0.0, "weight of cross-entropy on the data tokens (per-token nats)", lo=0.0)
        chunk: int = param(0, "rows per chunk of the fused loss (0: auto from the vocabulary size)", lo=0)
        teacher: str = param("online", "online: run the teacher model; offline: its top-k log-probs stored in "
                             "the traces (data.source=traces, made with sampling.topk=K)", choices=["online", "offline"])
        topk: int = param(20, "with a teacher that scores but has no hidden states (teacher.name=traces:DIR, a "
                          "server): the top-k per position the sparse path learns from (at most what the teacher has)", lo=1)
        tail: str = param("drop", "offline top-k: renormalise both over the k ids (drop), or keep the rest of "
                          "the mass as one extra bucket (bucket; needs temperature 1)", choices=["drop", "bucket"])

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        if cfg.kd_weight == 0 and cfg.ce_weight == 0:
            from ...errors import ConfigError

            raise ConfigError("method_args: kd_weight and ce_weight are both 0; nothing to train")
        self._teacher = None
        if cfg.teacher == "offline":
            from ...errors import ConfigError

            if ctx.run.data.source != "traces":
                raise ConfigError("method_args.teacher=offline reads the teacher's top-k from traces: "
                                  "set data.source=traces data.traces=DIR")
            if cfg.tail == "bucket" and cfg.temperature != 1.0:
                raise ConfigError("method_args.tail=bucket needs method_args.temperature=1.0")

    def examples(self):
        if self.cfg.teacher == "offline":
            from .sft import trace_examples

            return trace_examples(self.ctx.run.data, self.ctx.tokenizer, with_topk=True, ctx=self.ctx)
        return super().examples()

    def teacher(self, model):
        return load_teacher_once(self, model)

    def teacher_needs(self) -> tuple:
        # offline reads the top-k from the data; online: the fused path, or the sparse one from scores
        return () if self.cfg.teacher == "offline" else ({"hidden"}, {"score"}, {"score_stored"})

    def loss(self, model, batch) -> LossOut:
        if self.cfg.teacher == "offline":
            return self.offline_loss(model, batch)
        return self.distill(model, batch)

    def distill(self, model, batch) -> LossOut:
        """The fused path when the teacher has hidden states; otherwise the sparse top-k path on
        the teacher's scores of the batch's completions."""
        teacher = self.teacher(model)
        if "hidden" in teacher.capabilities:
            return distill_tokens(model, teacher, batch, self.cfg, self.vocab)
        k = min(self.cfg.topk, teacher.max_topk or self.cfg.topk)  # a trace store has what it stored
        return sparse_topk_loss(model, teacher_topk_batch(teacher, batch, k), self.cfg, len(self.ctx.tokenizer))

    def offline_loss(self, model, batch) -> LossOut:
        return sparse_topk_loss(model, batch, self.cfg, len(self.ctx.tokenizer))


def logprobs_from_hidden(hidden, weight, labels, *, temperature: float = 1.0, vocab: Optional[int] = None):
    """log softmax(hidden @ weight.T / T)[label] per row, float32, chunk by chunk; no gradient."""
    weight = weight[:vocab] if vocab else weight
    out = torch.empty(labels.shape[0], dtype=torch.float32, device=hidden.device)
    step = max(16, (1 << 22) // weight.shape[0])
    with torch.no_grad():
        for s in range(0, labels.shape[0], step):
            z = (hidden[s:s + step] @ weight.T.to(hidden.dtype)).float() / temperature
            out[s:s + step] = z.gather(1, labels[s:s + step, None])[:, 0] - torch.logsumexp(z, -1)
    return out

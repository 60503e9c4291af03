"""Token-level distillation between a teacher and a student whose tokenizers differ, for `kd` and
`gkd` (`method_args.cross_tokenizer`):

1. the student's completion tokens are decoded to text, and the teacher tokenizes that text (and
   the prompt's) itself: the teacher scores the same characters, in its own tokens; a final
   student EOS becomes the teacher's EOS (a span of its own), not the text of the student's;
2. the two tokenizations are aligned by character offsets (`retort.lm.data.align`): each span of
   text on which both tokenizations break groups the student tokens and the teacher tokens that
   spell it;
3. within a span of several tokens, the per-position distributions are merged as TRL's GOLD does
   (the geometric mean: the sum of the log-probabilities, renormalised), and the span's student
   and teacher distributions meet through `uld` (Boizard et al. 2024, arXiv:2402.12030) or
   `hybrid` (GOLD: the forward KL over the tokens both vocabularies spell the same, ULD over the
   rest; `retort.losses.uld`).

Logged besides `kd` and `ce`: `spans_per_token` and `teacher_tokens_per_token` (per student label
token: how much the two tokenizations differ; both 1 for identical tokenizers).

Loss of a batch, summed over spans s (normalised by the student's label-token count, as `kd`):
    L = kd_weight * T^2 * sum_s D(merge(P_S^T)_s, merge(P_T^T)_s) + ce_weight * sum_t CE(y_t)
When the tokenizers are identical, every span is one token on each side and `hybrid` is exactly
`kd` with forward_kl (tested); `uld` is then the sorted-probability L1 of each token's two
distributions (0 where they agree; never above sum_v |P_S(v) - P_T(v)|).

Online (`kd`, `gkd`; `cross_tokenizer_loss`) the teacher is a model with hidden states; its logits
are formed for the completion positions only, and the student's in full over its label tokens (one
example at a time, each differentiated down to its logits before the next: what stays for the
backward is one (tokens x student vocabulary) gradient per example, `_row_loss`). Offline (`kd` with `teacher=offline`; `cross_tokenizer_topk_loss`) the teacher
is its stored top-k along its own sampled ids, renormalised over the k (every other token ~0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import param
from ...errors import ConfigError, DataError
from ...losses.uld import hybrid_uld, uld
from ..data.align import align_spans, encode_with_ends, token_ends
from ..data.collate import IGNORE
from .base import LossOut
from .hidden import last_hidden, unwrap

MODES = ["off", "auto", "uld", "hybrid"]


@dataclass
class CrossTokenizerConfig:
    """Whether and how to distill across different tokenizers."""

    cross_tokenizer: str = param(
        "off", "teacher and student tokenizers differ: hybrid (exact KL on the tokens both vocabularies "
        "share, ULD on the rest; TRL's GOLD), uld (sorted-probability distance, Boizard et al. 2024), "
        "auto (hybrid when the vocabularies differ, else the same-tokenizer loss), off (refuse a mismatch)",
        choices=MODES)
    unmatched_weight: float = param(1.0, "cross_tokenizer=hybrid: weight of the ULD term over the tokens "
                                    "the two vocabularies do not share", lo=0.0)


def check_cross_config(cfg) -> None:
    """Refuse a cross-tokenizer loss with a divergence it does not compute."""
    if cfg.cross_tokenizer in ("uld", "hybrid", "auto") and cfg.divergence != "forward_kl":
        raise ConfigError(
            f"method_args.cross_tokenizer={cfg.cross_tokenizer} compares the two tokenizers' distributions "
            f"by forward KL (hybrid, on shared tokens) and ULD; method_args.divergence={cfg.divergence} "
            "does not apply: set method_args.divergence=forward_kl")


def _span_logprobs(logprobs: torch.Tensor, spans: list[range]) -> torch.Tensor:
    """One row per span: the row itself for a one-token span, else the sum of its rows'
    log-probabilities renormalised (GOLD's geometric-mean merge)."""
    owner = torch.empty(logprobs.shape[0], dtype=torch.long, device=logprobs.device)
    for k, r in enumerate(spans):
        owner[r.start:r.stop] = k
    size = torch.tensor([len(r) for r in spans], device=logprobs.device)
    merged = logprobs.new_zeros((len(spans), logprobs.shape[-1])).index_add(0, owner, logprobs)
    multi = size > 1
    if bool(multi.any()):
        merged = torch.where(multi[:, None], torch.log_softmax(merged, dim=-1), merged)
    return merged


def _strip(ids: list[int], tok) -> list[int]:
    """A prompt's ids without padding and BOS (the teacher adds its own)."""
    drop = {tok.pad_token_id, tok.bos_token_id} - {None}
    return [i for i in ids if i not in drop]


def student_ends(tok, ids: list[int]) -> tuple[str, list[int]]:
    """The text of the student's tokens `ids` and where each ends: from the tokenizer's offset
    mapping when encoding that text gives back `ids` (the usual case, and linear), else by
    decoding prefixes (`token_ends`: a rollout the tokenizer would have split otherwise)."""
    text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if getattr(tok, "is_fast", False):
        again, ends = encode_with_ends(tok, text)
        if again == ids:
            return text, ends
    return token_ends(tok, ids, text)


def teacher_inputs(batch, student_tok, teacher_tok):
    """Per row with label tokens: (row, label positions, teacher prompt ids, teacher completion ids,
    spans) — the student's text re-tokenised for the teacher and the two aligned."""
    rows = []
    for i in range(batch["labels"].shape[0]):
        pos = (batch["labels"][i] != IGNORE).nonzero().squeeze(-1)
        if pos.numel() == 0:
            continue
        if int(pos[-1] - pos[0]) + 1 != pos.numel():
            raise DataError("method_args.cross_tokenizer aligns one completion per row; this batch has a "
                            "multi-turn row (masked tokens between trained ones): use single-turn data")
        mask = batch["attention_mask"][i, :int(pos[0])].bool()
        prompt = _strip(batch["input_ids"][i, :int(pos[0])][mask].tolist(), student_tok)
        ids = batch["labels"][i, pos].tolist()
        # the student's EOS is the teacher's EOS, not its text: one span of its own, at the end
        eos = student_tok.eos_token_id is not None and teacher_tok.eos_token_id is not None \
            and ids[-1] == student_tok.eos_token_id
        text, s_ends = student_ends(student_tok, ids[:-1] if eos else ids)
        prompt_text = student_tok.decode(prompt, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        t_prompt = teacher_tok(prompt_text, add_special_tokens=True)["input_ids"]
        if not t_prompt:  # the teacher's first completion token needs a position before it
            t_prompt = [teacher_tok.bos_token_id if teacher_tok.bos_token_id is not None else teacher_tok.eos_token_id]
        t_comp, t_ends = encode_with_ends(teacher_tok, text)
        spans = align_spans(s_ends, t_ends)
        if eos:
            spans.append((range(len(ids) - 1, len(ids)), range(len(t_comp), len(t_comp) + 1)))
            t_comp = t_comp + [teacher_tok.eos_token_id]
        rows.append((i, pos, t_prompt, t_comp, spans))
    return rows


def cross_tokenizer_loss(model, teacher, batch, c, *, mode: str, student_tok, shared=None) -> LossOut:
    """The cross-tokenizer loss (module docstring) of the student on `batch` against `teacher`
    (a `Teacher` with hidden states and its own tokenizer). `mode`: uld | hybrid; `shared`: the
    (student id, teacher id) pairs of `shared_vocab` (hybrid)."""
    t_tok = teacher.tokenizer
    rows = teacher_inputs(batch, student_tok, t_tok)
    device = batch["input_ids"].device
    s_weight = unwrap(model).get_output_embeddings().weight[:len(student_tok)]
    hidden = last_hidden(model, batch)
    scale = c.kd_weight * (c.temperature ** 2 if c.t_squared else 1.0)
    loss = hidden.new_zeros((), dtype=torch.float32)
    kd_sum = ce_sum = 0.0
    n = int((batch["labels"] != IGNORE).sum())
    if not rows:
        return LossOut(loss + 0.0 * hidden.sum(), 0, {"kd": 0.0, "ce": 0.0})
    t_pad = t_tok.pad_token_id if t_tok.pad_token_id is not None else 0
    width = max(len(p) + len(cm) for _, _, p, cm, _ in rows)
    t_ids = torch.full((len(rows), width), t_pad, dtype=torch.long)
    t_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (_, _, p, cm, _) in enumerate(rows):
        t_ids[r, :len(p) + len(cm)] = torch.tensor(p + cm, dtype=torch.long)
        t_mask[r, :len(p) + len(cm)] = 1
    with torch.no_grad():
        t_hidden, t_weight = teacher.hidden({"input_ids": t_ids.to(device), "attention_mask": t_mask.to(device)})
        t_weight = t_weight[:len(t_tok)]
    n_spans = n_teacher = 0
    for r, (i, pos, p, cm, spans) in enumerate(rows):
        if not spans:
            continue
        z_s = (hidden[i, pos - 1] @ s_weight.T).float()
        at = torch.arange(len(p) - 1, len(p) + len(cm) - 1, device=device)
        with torch.no_grad():
            z_t = (t_hidden[r, at] @ t_weight.T).float()
        # The row's loss is differentiated here, down to its logits (`_row_loss`), and joins the
        # batch's graph as <z_s, dL/dz_s>, which keeps one (tokens x student vocabulary) gradient
        # per row: the log-softmaxes, the span merges and ULD's sorted, padded (tokens x teacher
        # vocabulary) tensors of every row would otherwise all stay alive until the backward.
        row, kd, ce = _row_loss(z_s, z_t, batch["labels"][i, pos], spans, c, mode, shared, scale)
        loss = loss + row
        kd_sum += float(kd.detach())
        ce_sum += float(ce.detach())
        n_spans += len(spans)
        n_teacher += len(cm)
    return LossOut(loss, n, {"kd": kd_sum / max(1, n), "ce": ce_sum / max(1, n),
                             "spans_per_token": n_spans / max(1, n), "teacher_tokens_per_token": n_teacher / max(1, n)})


def _row_loss(z_s, z_t, labels, spans, c, mode: str, shared, scale: float):
    """(loss, kd, ce) of one row from its student logits `z_s` (label positions x student
    vocabulary) and teacher logits `z_t`. `loss` has the row's value and, where `z_s` needs a
    gradient, the row's gradient through `z_s` only (the surrogate <z_s, g> with g = dL/dz_s
    computed now): the row's intermediate tensors are freed before the next row's are made."""
    def value(z):
        ls = _span_logprobs(torch.log_softmax(z / c.temperature, -1), [s for s, _ in spans])
        lt = _span_logprobs(torch.log_softmax(z_t / c.temperature, -1), [t for _, t in spans])
        if mode == "hybrid":
            kd = hybrid_uld(ls, lt, shared, unmatched_weight=c.unmatched_weight).sum()
        else:
            kd = uld(ls, lt).sum()
        ce = torch.nn.functional.cross_entropy(z, labels, reduction="sum") if c.ce_weight else z.new_zeros(())
        return scale * kd + c.ce_weight * ce, kd.detach(), ce.detach()

    if not z_s.requires_grad:
        return value(z_s)
    z = z_s.detach().requires_grad_(True)
    with torch.enable_grad():
        total, kd, ce = value(z)
        (g,) = torch.autograd.grad(total, z)
    surrogate = (z_s * g).sum()
    return total.detach() + (surrogate - surrogate.detach()), kd, ce


def _teacher_topk_logprobs(ids, lps, vocab: int, temperature: float) -> torch.Tensor:
    """(n, vocab) log-probs of a teacher known only by its top-k (`ids`, `lps`: (n, k)): the k
    renormalised at `temperature` (the `drop` tail of `kd`), every other token at -1e4 rather than
    -inf, so that a merged span whose positions list different tokens stays finite."""
    z = torch.full((ids.shape[0], vocab), -1e4, dtype=torch.float32, device=ids.device)
    z.scatter_(1, ids, torch.log_softmax(lps.float() / temperature, -1).masked_fill(lps <= -1e4, -1e4))
    return z


def cross_tokenizer_topk_loss(model, batch, c, *, mode: str, student_tok, teacher_tok, shared=None) -> LossOut:
    """The cross-tokenizer loss against a teacher's stored top-k (offline: `teacher_ids`,
    `teacher_topk_ids`, `teacher_topk_logprobs` in the batch, from `trace_examples(cross=...)`).
    The teacher's completion is its own sampled ids; the student's labels are the same text in the
    student's tokens; the two are aligned as online. A row whose two texts differ (a tokenizer
    that does not round-trip the text) gets no KD term, counted in `unaligned_rows`."""
    device = batch["input_ids"].device
    s_weight = unwrap(model).get_output_embeddings().weight[:len(student_tok)]
    hidden = last_hidden(model, batch)
    scale = c.kd_weight * (c.temperature ** 2 if c.t_squared else 1.0)
    loss = hidden.new_zeros((), dtype=torch.float32) + 0.0 * hidden.sum()
    kd_sum = ce_sum = 0.0
    n = int((batch["labels"] != IGNORE).sum())
    n_spans = n_teacher = unaligned = 0
    for i in range(batch["labels"].shape[0]):
        pos = (batch["labels"][i] != IGNORE).nonzero().squeeze(-1)
        if pos.numel() == 0:
            continue
        ids = batch["labels"][i, pos].tolist()
        t_all = batch["teacher_ids"][i]
        t_ids = t_all[t_all >= 0].tolist()
        s_eos = bool(ids) and ids[-1] == student_tok.eos_token_id
        t_eos = bool(t_ids) and t_ids[-1] == teacher_tok.eos_token_id
        text, s_ends = student_ends(student_tok, ids[:-1] if s_eos else ids)
        t_text, t_ends = student_ends(teacher_tok, t_ids[:-1] if t_eos else t_ids)
        z_s = (hidden[i, pos - 1] @ s_weight.T).float()
        if c.ce_weight:
            ce = torch.nn.functional.cross_entropy(z_s, batch["labels"][i, pos], reduction="sum")
            loss = loss + c.ce_weight * ce
            ce_sum += float(ce.detach())
        spans = align_spans(s_ends, t_ends) if t_text == text else []
        if t_text != text:
            unaligned += 1
            continue
        if s_eos and t_eos:
            spans.append((range(len(ids) - 1, len(ids)), range(len(t_ids) - 1, len(t_ids))))
        if not spans:
            continue
        lt_rows = _teacher_topk_logprobs(batch["teacher_topk_ids"][i, :len(t_ids)],
                                         batch["teacher_topk_logprobs"][i, :len(t_ids)], len(teacher_tok), c.temperature)
        # a span with a teacher position that has no stored row gets no teacher term
        has = batch["teacher_topk_logprobs"][i, :len(t_ids)].max(-1).values > -1e4
        spans = [(s, t) for s, t in spans if bool(has[t.start:t.stop].all())]
        if not spans:
            continue
        ls = _span_logprobs(torch.log_softmax(z_s / c.temperature, -1), [s for s, _ in spans])
        lt = _span_logprobs(lt_rows, [t for _, t in spans])
        kd = hybrid_uld(ls, lt, shared, unmatched_weight=c.unmatched_weight).sum() if mode == "hybrid" \
            else uld(ls, lt).sum()
        loss = loss + scale * kd
        kd_sum += float(kd.detach())
        n_spans += len(spans)
        n_teacher += len(t_ids)
    return LossOut(loss, n, {"kd": kd_sum / max(1, n), "ce": ce_sum / max(1, n),
                             "spans_per_token": n_spans / max(1, n), "teacher_tokens_per_token": n_teacher / max(1, n),
                             "unaligned_rows": float(unaligned)})


def cross_tokenizer_scored_loss(model, teacher, batch, c, *, mode: str, student_tok, shared=None, k: int) -> LossOut:
    """The cross-tokenizer loss against a teacher that scores but has no hidden states (a server:
    `teacher.name=openai:MODEL` with a checked `teacher.api.tokenizer`): the student's text is
    re-tokenised for it as online, it gives its top-`k` at each of its tokens (`Teacher.score`),
    and the loss is the offline one on them (`cross_tokenizer_topk_loss`)."""
    rows = teacher_inputs(batch, student_tok, teacher.tokenizer)
    b = batch["labels"].shape[0]
    width = max([len(cm) for *_, cm, _ in rows] or [1])
    ids = torch.full((b, width), -1, dtype=torch.long)
    t_ids = torch.zeros((b, width, k), dtype=torch.long)
    t_lp = torch.full((b, width, k), -1e4, dtype=torch.float32)
    scores = teacher.score([p for _, _, p, _, _ in rows], [cm for _, _, _, cm, _ in rows], topk=k) if rows else []
    for (i, _, _, cm, _), sc in zip(rows, scores):
        ids[i, :len(cm)] = torch.tensor(cm, dtype=torch.long)
        n = min(len(cm), len(sc.topk_ids))
        kk = min([len(r) for r in sc.topk_ids[:n]] or [0])
        if n and kk:  # a position the teacher gave no row for gets no teacher term
            t_ids[i, :n, :kk] = torch.as_tensor(sc.topk_ids, dtype=torch.long)[:n, :kk]
            t_lp[i, :n, :kk] = torch.as_tensor(sc.topk_logprobs, dtype=torch.float32)[:n, :kk]
    device = batch["input_ids"].device
    scored = {**batch, "teacher_ids": ids.to(device), "teacher_topk_ids": t_ids.to(device),
              "teacher_topk_logprobs": t_lp.to(device)}
    return cross_tokenizer_topk_loss(model, scored, c, mode=mode, student_tok=student_tok,
                                     teacher_tok=teacher.tokenizer, shared=shared)


__all__ = ["MODES", "CrossTokenizerConfig", "check_cross_config", "cross_tokenizer_loss", "teacher_inputs"]

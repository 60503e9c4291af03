"""Tokenise (prompt, completion) pairs and collate them into right-padded training batches; a prompt
as the tokenizer's chat template renders it (`encode_prompt` as ids, `render_prompt` as text).

Prompt tokens and padding get label -100, so a loss sums over completion tokens only. Batches are
formed from length-sorted buckets so that padding is a small share of the compute.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ...errors import DataError
from ...losses.reduce import IGNORE  # re-exported: collators write it, losses skip it
from ..tasks.base import Prompt, manifest_format, with_system


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    # optional teacher top-k at each labelled position (offline KD): rows aligned with the label
    # tokens, in order; positions without a row get none
    topk_ids: Optional[Sequence[Sequence[int]]] = None      # (positions, k): lists or an array
    topk_logprobs: Optional[Sequence[Sequence[float]]] = None
    # cross-tokenizer offline KD: the teacher's own completion ids, which the top-k rows follow
    # instead of the label tokens (the student's tokens of the same text)
    teacher_ids: Optional[Sequence[int]] = None
    # what on-policy methods need besides the ids: the prompt text, the reference answer (to verify
    # a rollout) and a worked solution (OPSD's privileged context), when the source has them
    prompt: Optional[str] = None
    answer: Optional[str] = None
    solution: Optional[str] = None

    @property
    def prompt_len(self) -> int:
        return next((i for i, lab in enumerate(self.labels) if lab != IGNORE), len(self.labels))

    @property
    def multi_turn(self) -> bool:
        """Whether masked tokens follow trained ones (a conversation, `encode_messages`)."""
        return any(lab == IGNORE for lab in self.labels[self.prompt_len:])


def _chat(tok, prompt: str, tokenize: bool):
    """The chat template applied to the prompt's turns: its system message (a task's, carried by
    the prompt: `tasks.Prompt`) and the user text. A template that refuses a system turn gets the
    system message before the user text instead."""
    system = getattr(prompt, "system", None)
    user = {"role": "user", "content": str(prompt)}
    if system:
        try:
            return tok.apply_chat_template([{"role": "system", "content": system}, user],
                                           add_generation_prompt=True, tokenize=tokenize)
        except Exception:  # jinja's TemplateError, raised by templates without a system role
            user = {"role": "user", "content": with_system(prompt)}
    return tok.apply_chat_template([user], add_generation_prompt=True, tokenize=tokenize)


def encode_prompt(tok, prompt: str) -> list[int]:
    """Prompt ids: the system and user turns of the tokenizer's chat template (with the generation
    prompt) when it has one, else the text (after the system message, when the prompt has one)
    with the tokenizer's own special tokens (BOS for retort's presets)."""
    if getattr(tok, "chat_template", None):
        ids = _chat(tok, prompt, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return tok(with_system(prompt), add_special_tokens=True)["input_ids"]


def render_prompt(tok, prompt: str) -> str:
    """The prompt as text, as the chat template renders it before the answer (with the generation
    prompt), or as it is (after its system message) when the tokenizer has no template: what a
    server's completions endpoint continues (a prefix of the answer may follow it)."""
    if not getattr(tok, "chat_template", None):
        return with_system(prompt)
    text = _chat(tok, prompt, tokenize=False)
    bos = tok.bos_token
    # a completions endpoint adds BOS itself when the tokenizer does: the template's own would double it
    if bos and text.startswith(bos) and tok("", add_special_tokens=True)["input_ids"][:1] == [tok.bos_token_id]:
        text = text[len(bos):]
    return text


def encode_example(tok, prompt: str, completion: str) -> Encoded:
    p = encode_prompt(tok, prompt)
    c = tok(completion, add_special_tokens=False)["input_ids"]
    if tok.eos_token_id is not None:
        c = c + [tok.eos_token_id]
    return Encoded(p + c, [IGNORE] * len(p) + c)


def encode_examples(tok, prompts: list[str], completions: list[str]) -> list[Encoded]:
    """`encode_example` for many pairs, tokenised in two batched calls (much faster for large sets)."""
    if not prompts:
        return []
    if getattr(tok, "chat_template", None):
        ps = [encode_prompt(tok, p) for p in prompts]
    else:
        ps = tok([with_system(p) for p in prompts], add_special_tokens=True)["input_ids"]
    cs = tok(completions, add_special_tokens=False)["input_ids"]
    eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
    return [Encoded(p + c + eos, [IGNORE] * len(p) + c + eos) for p, c in zip(ps, cs)]


class TraceEncoder:
    """(prompt ids, completion ids) of trace rows for the student's tokenizer. When it is the
    teacher's, the teacher's sampled token ids are used as they are (decode-then-encode can change
    BPE segmentation); otherwise the completion text is tokenised by the student. A completion that
    stopped gets EOS; one cut by the length limit never ended, so the student is not taught to
    stop there."""

    def __init__(self, manifest: dict, cols: dict, tok):
        from .hashes import tokenizer_sha256

        self.cols, self.tok = cols, tok
        self.same_vocab = manifest.get("tokenizer_sha256") == tokenizer_sha256(tok)
        # the system message the teacher was prompted with (the manifest's answer format), so the
        # student learns from the same prompt
        self.system = manifest_format(manifest)["system"]
        self.eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
        self._prompts: dict[str, list[int]] = {}

    def encoded(self, i: int) -> Encoded:
        """Row `i` as a training example: a multi-turn row (`messages`) by `encode_messages`, a
        single-turn one as prompt ids (masked) + completion ids."""
        msgs = (self.cols.get("messages") or [None] * (i + 1))[i]
        if msgs is not None:
            return encode_messages(self.tok, parse_messages(msgs, f"trace row {i}"))
        p, c = self(i)
        return Encoded(p + c, [IGNORE] * len(p) + c)

    def __call__(self, i: int) -> tuple[list[int], list[int]]:
        cols, tok = self.cols, self.tok
        if cols["prompt"][i] not in self._prompts:
            self._prompts[cols["prompt"][i]] = encode_prompt(tok, Prompt(cols["prompt"][i], self.system))
        p = self._prompts[cols["prompt"][i]]
        c = cols["completion_ids"][i] if self.same_vocab else tok(cols["completion"][i], add_special_tokens=False)["input_ids"]
        return p, list(c) + (self.eos if cols["finish_reason"][i] == "stop" else [])


ROLES = ("system", "user", "assistant", "tool")


def parse_messages(text: str, where: str) -> list[dict]:
    """A multi-turn row's conversation: a JSON list of {"role", "content"}, roles from `ROLES`, at
    least one assistant turn; the first bad entry is named."""
    import json

    try:
        msgs = json.loads(text)
    except ValueError as e:
        raise DataError(f"{where}: messages is not valid JSON ({e})") from None
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}}")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{j}] must be {{\"role\": one of {', '.join(ROLES)}, "
                            f"\"content\": a string}}, got {str(m)[:80]}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f"{where}: messages has no assistant turn to learn from")
    return msgs


def encode_messages(tok, msgs: list[dict]) -> Encoded:
    """A conversation as one sequence whose labels follow the roles: the tokens of assistant turns
    are trained, everything else (system, user, tool outputs, the template's role headers) is
    masked. With a chat template, each turn is what rendering one more message adds (the template
    must render a conversation's prefix as a prefix, which is checked); without one, the turns
    before the first assistant one are the prompt (as `encode_prompt` makes it), each assistant turn
    its text plus EOS, and each later turn its text and a newline. [user, assistant] gives exactly
    `encode_example(user, assistant)` without a template."""
    ids: list[int] = []
    labels: list[int] = []
    eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
    if getattr(tok, "chat_template", None):
        def render(upto, gen=False):
            out = tok.apply_chat_template(msgs[:upto], add_generation_prompt=gen, tokenize=True)
            return list(out["input_ids"] if hasattr(out, "keys") else out)

        for i, m in enumerate(msgs):
            head = render(i, gen=True) if m["role"] == "assistant" else ids
            full = render(i + 1)
            if full[:len(ids)] != ids or full[:len(head)] != head:
                raise DataError("the tokenizer's chat template does not render a conversation's prefix as its "
                                "prefix; multi-turn rows need one that does (or chat_template=off)")
            labels += [IGNORE] * (len(head) - len(ids))
            labels += full[len(head):] if m["role"] == "assistant" else [IGNORE] * (len(full) - len(head))
            ids = full
        return Encoded(ids, labels)
    first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    ids = encode_prompt(tok, "\n".join(m["content"] for m in msgs[:first])) if first else []
    labels = [IGNORE] * len(ids)
    for m in msgs[first:]:
        if m["role"] == "assistant":
            new = tok(m["content"], add_special_tokens=False)["input_ids"] + eos
            ids, labels = ids + new, labels + new
        else:
            new = tok(m["content"] + "\n", add_special_tokens=False)["input_ids"]
            ids, labels = ids + new, labels + [IGNORE] * len(new)
    return Encoded(ids, labels)


def chars_per_token_bound(tok) -> int:
    """The most characters one token of `tok` can stand for: its longest vocabulary string (a
    byte-level token's string has one character per byte it covers, so this bounds it too)."""
    cached = getattr(tok, "_retort_char_bound", None)
    if cached is None:
        cached = max([len(t) for t in tok.get_vocab()] or [1])
        try:
            tok._retort_char_bound = cached
        except AttributeError:
            pass
    return cached


def encode_within(tok, prompts: list[str], completions: list[str], max_len: int) -> list[Optional[Encoded]]:
    """`encode_examples` for the pairs that fit in `max_len` tokens, None for the others. A pair
    with more characters than `max_len` tokens could ever cover (4x slack for normalisers that
    shorten text) is never tokenised, so one huge row costs no more than its string."""
    limit = 4 * max_len * chars_per_token_bound(tok)
    fits = [i for i, (p, c) in enumerate(zip(prompts, completions)) if len(p) + len(c) <= limit]
    out: list[Optional[Encoded]] = [None] * len(prompts)
    encoded = encode_examples(tok, [prompts[i] for i in fits], [completions[i] for i in fits])
    for i, enc in zip(fits, encoded):
        if len(enc.input_ids) <= max_len:
            out[i] = enc
    return out


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(x.input_ids) for x in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x.input_ids)
        ids[i, :n] = torch.tensor(x.input_ids)
        labels[i, :n] = torch.tensor(x.labels)
        mask[i, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if any(x.teacher_ids is not None for x in items):
        batch.update(_teacher_rows(items))
    elif any(x.topk_ids is not None for x in items):
        k = max(len(x.topk_ids[0]) for x in items if x.topk_ids is not None and len(x.topk_ids))
        t_ids = torch.zeros((len(items), width, k), dtype=torch.long)
        # -inf-like filler: a position without teacher rows is masked out by `has_teacher`
        t_lp = torch.full((len(items), width, k), -1e4, dtype=torch.float32)
        has = torch.zeros((len(items), width), dtype=torch.bool)
        for i, x in enumerate(items):
            if x.topk_ids is None or not len(x.topk_ids):
                continue
            pos = [j for j, lab in enumerate(x.labels) if lab != IGNORE][:len(x.topk_ids)]
            t_ids[i, pos] = torch.as_tensor(np.asarray(x.topk_ids), dtype=torch.long)[:len(pos)]
            t_lp[i, pos] = torch.as_tensor(np.asarray(x.topk_logprobs), dtype=torch.float32)[:len(pos)]
            has[i, pos] = True
        batch.update(topk_ids=t_ids, topk_logprobs=t_lp, has_teacher=has)
    return batch


def _teacher_rows(items: list[Encoded]) -> dict[str, torch.Tensor]:
    """`teacher_ids` (B, W) padded with -1 and the top-k rows along them, `teacher_topk_ids` and
    `teacher_topk_logprobs` (B, W, k; -1e4 where a position has no row)."""
    width = max(len(x.teacher_ids or []) for x in items)
    k = max((len(x.topk_ids[0]) for x in items if x.topk_ids is not None and len(x.topk_ids)), default=1)
    ids = torch.full((len(items), width), -1, dtype=torch.long)
    t_ids = torch.zeros((len(items), width, k), dtype=torch.long)
    t_lp = torch.full((len(items), width, k), -1e4, dtype=torch.float32)
    for i, x in enumerate(items):
        n = len(x.teacher_ids or [])
        ids[i, :n] = torch.as_tensor(list(x.teacher_ids or []), dtype=torch.long)
        if x.topk_ids is not None and len(x.topk_ids):
            rows = min(n, len(x.topk_ids))
            t_ids[i, :rows] = torch.as_tensor(np.asarray(x.topk_ids), dtype=torch.long)[:rows]
            t_lp[i, :rows] = torch.as_tensor(np.asarray(x.topk_logprobs), dtype=torch.float32)[:rows]
    return {"teacher_ids": ids, "teacher_topk_ids": t_ids, "teacher_topk_logprobs": t_lp}


def bucketed_order(lengths: list[int], batch_size: int, seed: int, bucket_batches: int = 50) -> list[list[int]]:
    """Batches of indices: shuffle, sort within windows of `bucket_batches` batches by length,
    cut into batches, shuffle the batches. Deterministic for a seed."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    batches = [b for b in batches if len(b) == batch_size] or batches
    rng.shuffle(batches)
    return batches

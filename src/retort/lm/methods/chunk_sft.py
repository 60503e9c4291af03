"""`chunk_sft`: Skip-Thinking's chunk-wise training (CWT) and skip-thinking training (STT)
(EMNLP 2025, arXiv:2505.18642).

Each rationale (a worked solution or a correct teacher trace) is split into sentences, and the
sentences into m chunks c_1..c_m. Every chunk becomes one training example:
    input = (question, c_1..c_{i-1}),  target = c_i (+ EOS after the last chunk)
    L_i = -(1/|c_i|) sum_{t in c_i} log p(c_i,t | q, c_<i, c_i,<t)
so a long rationale's few reasoning tokens are not averaged away among the rest. Examples from all
rationales are shuffled together. The loss is averaged over examples (chunks), not over tokens.

Split heuristic (documented, configurable):
- sentences: lines, and within a line the pieces ending in ". ", "! " or "? ";
  each keeps its delimiter, so the chunks concatenate back to the rationale exactly;
- `chunking=average` (AC): ceil(n / sentences_per_chunk) chunks of (near) equal sentence count;
- `chunking=search` (SBC; the paper's objective is unpublished, this is retort's form):
  start from single sentences and greedily merge the adjacent pair with the highest coherence
  until that many chunks remain, where coherence is the Jaccard overlap of their character
  trigrams (no embedding model needed), minus `balance` x the merged chunk's share of the
  rationale (to keep chunk sizes even).
STT (`skip_share` > 0): a middle chunk is skippable when it has no digit and no "=" (a
rule-based criterion: no new numbers or equations). For that share of rationales that have one,
an extra example asks for the chunks after it straight from the chunks before it. On retort's
arithmetic task every line is an equation, so nothing is skippable there.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from ...config import param
from ..data.collate import IGNORE, Encoded, encode_prompt
from ..data.text import sentences
from ..data.traces import read_manifest, read_traces
from ..tasks.base import Prompt, manifest_format
from ...errors import ConfigError, DataError
from .base import LossOut, OffPolicy, sequence_logps

def _trigrams(s: str) -> set:
    s = " ".join(s.split())
    return {s[i:i + 3] for i in range(max(1, len(s) - 2))}


def chunk(sents: list[str], m: int, how: str = "average", balance: float = 0.5) -> list[str]:
    """m chunks of consecutive sentences (fewer when there are fewer sentences)."""
    m = max(1, min(m, len(sents)))
    if how == "average":
        bounds = [round(i * len(sents) / m) for i in range(m + 1)]
        return ["".join(sents[a:b]) for a, b in zip(bounds, bounds[1:])]
    if how != "search":
        raise ValueError(f"chunking must be 'average' or 'search', got {how!r}")
    chunks = list(sents)
    total = max(1, sum(len(s) for s in sents))
    while len(chunks) > m:
        def score(i):
            a, b = _trigrams(chunks[i]), _trigrams(chunks[i + 1])
            return len(a & b) / max(1, len(a | b)) - balance * (len(chunks[i]) + len(chunks[i + 1])) / total
        best = max(range(len(chunks) - 1), key=score)
        chunks[best:best + 2] = [chunks[best] + chunks[best + 1]]
    return chunks


def skippable(c: str) -> bool:
    return not re.search(r"[0-9=]", c)


class ChunkSFT(OffPolicy):
    name = "chunk_sft"
    paper = "Skip-Thinking: chunk-wise training and skip-thinking training, EMNLP 2025, arXiv:2505.18642"
    equation = "L_i = -(1/|c_i|) sum_t log p(c_i,t | q, c_<i, c_i,<t), one example per chunk, averaged over chunks"

    @dataclass
    class Config:
        chunking: str = param("average", "average (equal sentence counts) or search (greedy coherent merges)",
                              choices=["average", "search"])
        sentences_per_chunk: int = param(3, "chunks per rationale = ceil(sentences / this)", lo=1)
        balance: float = param(0.5, "search: penalty on a merged chunk's share of the rationale", lo=0.0)
        skip_share: float = param(0.0, "STT: share of rationales with a skippable middle chunk that also get "
                                  "a skip example", lo=0.0, hi=1.0)

    def rationales(self) -> list[tuple[str, str, bool]]:
        """(prompt, rationale text, stopped) from the configured data source."""
        run = self.ctx.run
        if run.data.source == "answers":
            raise ConfigError("chunk_sft splits rationales: use data.source=solutions or traces")
        if run.data.source == "traces":
            cols = read_traces(run.data.traces, columns=["prompt", "completion", "correct", "finish_reason"]).to_pydict()
            keep = [i for i, ok in enumerate(cols["correct"]) if ok or run.data.trace_filter == "all"]
            system = manifest_format(read_manifest(run.data.traces))["system"]  # the teacher's prompt
            return [(Prompt(cols["prompt"][i], system), cols["completion"][i], cols["finish_reason"][i] == "stop")
                    for i in keep[:run.data.n_train]]
        rows = self.ctx.train_rows()  # each distinct row once; examples() repeats a file task's rows
        return [(ex.prompt, ex.solution, True) for ex in rows if ex.solution]

    def examples(self) -> list[Encoded]:
        tok, c = self.ctx.tokenizer, self.cfg
        rng = random.Random(self.ctx.run.seed)
        eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
        per_row: list[list[Encoded]] = []
        for prompt, text, stopped in self.rationales():
            out: list[Encoded] = []
            per_row.append(out)
            p = encode_prompt(tok, prompt)
            sents = sentences(text)
            parts = chunk(sents, math.ceil(len(sents) / c.sentences_per_chunk), c.chunking, c.balance)
            ids = [tok(part, add_special_tokens=False)["input_ids"] for part in parts]
            for i, target in enumerate(ids):
                target = target + (eos if stopped and i == len(ids) - 1 else [])
                context = p + [t for prev in ids[:i] for t in prev]
                out.append(Encoded(context + target, [IGNORE] * len(context) + target, prompt=prompt))
            middle = [j for j in range(1, len(parts) - 1) if skippable(parts[j])]
            if c.skip_share and middle and rng.random() < c.skip_share:
                j = middle[0]
                context = p + [t for prev in ids[:j] for t in prev]
                target = [t for nxt in ids[j + 1:] for t in nxt] + (eos if stopped else [])
                out.append(Encoded(context + target, [IGNORE] * len(context) + target, prompt=prompt))
        if self.ctx.run.data.source != "traces":
            per_row = self.ctx.cycle(per_row)  # a file task's rows repeated, sharing their examples
        out = [x for row in per_row for x in row
               if len(x.input_ids) <= self.ctx.run.data.max_len and any(lab != IGNORE for lab in x.labels)]
        if not out:
            raise DataError("chunk_sft: no chunk examples (no rationales, or all longer than data.max_len)")
        return out

    def count(self, batch) -> int:
        return int(((batch["labels"][:, 1:] != IGNORE).sum(-1) > 0).sum())

    def private_records(self) -> int:
        raise ConfigError("privacy.*: method chunk_sft cannot train under DP-SGD: every rationale becomes several "
                          "examples (its chunks), so one record would be drawn as many")

    def loss(self, model, batch) -> LossOut:
        logp, n_tok = sequence_logps(model, batch)
        has = n_tok > 0
        loss = -(logp[has] / n_tok[has]).sum()
        return LossOut(loss, int(has.sum()), {"chunk_tokens": float(n_tok[has].float().mean()) if has.any() else 0.0,
                                              "token_nll": float(-logp.detach().sum() / n_tok.sum().clamp_min(1))})

"""DASD's divergence-aware selection (DAS; arXiv:2601.09088, stage 2).

Prefer the teacher responses whose sentences the teacher finds far likelier than the (pre-
distillation) student does: those are what the student has yet to learn, while sentences the
student already over-weights give "misleading gradients". The report gives no thresholds; retort
uses this reading:

    lp_T(s), lp_S(s) = mean token log-prob of sentence s under the teacher (stored in the traces at
                       sampling time) and under the student (teacher-forced here, its own tokenizer)
    d(s)  = lp_T(s) - lp_S(s)
    s is a Teacher Sentence if d(s) > delta, a Student Sentence if d(s) < -delta  (delta = 1 nat)
    score(y) = (#Teacher - #Student) / #sentences
    keep the `keep` highest-scoring responses per prompt (ties: the earlier sample)

Sentences are those of `retort.lm.data.text.sentences` (lines, and ". "/"! "/"? " pieces within a line).
A token belongs to the sentence in which its text ends, found by decoding token prefixes, so the
two models may tokenize differently (everything is compared per sentence). A sentence with no
token of its own on either side (a token spanning it) is left out of the count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sentence_token_bounds(tok, ids: list[int], sentence_ends: list[int]) -> list[int]:
    """For each cumulative character end of a sentence, the number of tokens whose decoded text
    ends at or before it: sentence k owns tokens [bounds[k-1], bounds[k]). Binary search over
    decoded prefixes (decoding is monotone in the prefix), so O(#sentences x log #tokens) decodes."""
    cache: dict[int, int] = {0: 0}

    def length(i: int) -> int:
        if i not in cache:
            cache[i] = len(tok.decode(ids[:i], skip_special_tokens=True))
        return cache[i]

    bounds, lo = [], 0
    for end in sentence_ends:
        a, b = lo, len(ids)
        while a < b:  # largest i with length(i) <= end, searched as first i with length(i) > end
            mid = (a + b + 1) // 2
            if length(mid) <= end:
                a = mid
            else:
                b = mid - 1
        bounds.append(a)
        lo = a
    bounds[-1] = len(ids)  # trailing special tokens or undecodable bytes belong to the last sentence
    return bounds


def sentence_means(logprobs: list[float], bounds: list[int]) -> list[float | None]:
    out, start = [], 0
    for end in bounds:
        out.append(float(np.mean(logprobs[start:end])) if end > start else None)
        start = end
    return out


@dataclass
class DasScore:
    score: float
    teacher_sentences: int
    student_sentences: int
    sentences: int  # counted: both sides have tokens in them
    student_lp: float = 0.0  # the student's mean token log-prob over the whole completion


def das_score(teacher_means: list, student_means: list, delta: float = 1.0) -> DasScore:
    t = s = n = 0
    for lt, ls in zip(teacher_means, student_means):
        if lt is None or ls is None:
            continue
        n += 1
        d = lt - ls
        t += d > delta
        s += d < -delta
    return DasScore((t - s) / n if n else 0.0, t, s, n)


def score_traces(cols: dict, rows: list[int], teacher_tok, student, student_tok, encode, *, delta: float = 1.0,
                 batch_size: int = 64, progress=None) -> dict[int, DasScore]:
    """DAS scores of the given trace rows. `cols`: the trace columns (prompt, completion,
    completion_ids, completion_logprobs, finish_reason); `encode(i)`: the student's (prompt ids,
    completion ids) of row i (`retort.lm.data.collate.TraceEncoder`), whose EOS, if any, is not scored."""
    from ..data.text import sentences
    from ..rollout.score import score

    out: dict[int, DasScore] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        prompts, comps = [], []
        for i in chunk:
            p, c = encode(i)
            if c and student_tok.eos_token_id is not None and c[-1] == student_tok.eos_token_id \
                    and cols["finish_reason"][i] == "stop":
                c = c[:-1]
            prompts.append(p)
            comps.append(c)
        scored = score(student, prompts, comps, batch_size=batch_size, pad_id=student_tok.pad_token_id or 0)
        for i, c, sc in zip(chunk, comps, scored):
            sents = sentences(cols["completion"][i])
            if not sents:
                out[i] = DasScore(0.0, 0, 0, 0)
                continue
            ends = list(np.cumsum([len(s) for s in sents]))
            t_ids = list(cols["completion_ids"][i])
            t_means = sentence_means(list(cols["completion_logprobs"][i]),
                                     sentence_token_bounds(teacher_tok, t_ids, ends))
            s_means = sentence_means(sc.logprobs, sentence_token_bounds(student_tok, c, ends))
            out[i] = das_score(t_means, s_means, delta)
            out[i].student_lp = float(np.mean(sc.logprobs)) if sc.logprobs else float("-inf")
        if progress is not None:
            progress(len(chunk))
    return out


RULES = ("das", "likeliest", "random")


def select_top(prompt_ids: list[str], sample_idx: list[int], rows: list[int], scores: dict[int, DasScore],
               keep: int, rule: str = "das", seed: int = 0) -> list[int]:
    """The `keep` best rows per prompt, in input order, by `rule`: the highest DAS score
    (teacher-guided), the highest student mean log-prob ("the trace the student finds most
    likely", the heuristic provenance tracing replaces), or at random (seeded per prompt and sample). Ties: the
    lower sample index."""
    import random

    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    key = {"das": lambda i: -scores[i].score, "likeliest": lambda i: -scores[i].student_lp,
           "random": lambda i: random.Random(f"{seed}:{prompt_ids[i]}:{sample_idx[i]}").random()}[rule]
    by_prompt: dict[str, list[int]] = {}
    for i in rows:
        by_prompt.setdefault(prompt_ids[i], []).append(i)
    chosen = set()
    for group in by_prompt.values():
        group.sort(key=lambda i: (key(i), sample_idx[i]))
        chosen.update(group[:keep])
    return [i for i in rows if i in chosen]

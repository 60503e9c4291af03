"""Provenance tracing (arXiv 2512.20908): where the sentences of a
distilled student's answers come from.

For each test prompt the distilled model D answers greedily; its answer is split into sentences
(`retort.lm.data.text.sentences`, lossless). Every sentence is scored in the same context under the
teacher T, the student before distillation S and D itself, as its mean token log-prob (the log of
the geometric-mean token probability). With margin `delta` (1 nat, retort's default):
- teacher-originated: log p_T - log p_S > delta;
- student-originated: log p_S - log p_T > delta;
- boosted: neither, and |log p_D - max(log p_T, log p_S)| > delta (distillation made it, mostly
  likelier, from neither source);
- shared: the rest (all three agree).
Reported: the share of each category overall, in correct and in incorrect answers, and by position
(the first, middle and last third of each answer's sentences). The three models must share a
vocabulary (the same token ids are scored)."""

from __future__ import annotations

from collections import Counter
from itertools import accumulate

CATEGORIES = ("teacher", "student", "shared", "boosted")
POSITIONS = ("first third", "middle third", "last third")


def classify(lt: float, ls: float, ld: float, delta: float = 1.0) -> str:
    if lt - ls > delta:
        return "teacher"
    if ls - lt > delta:
        return "student"
    if abs(ld - max(lt, ls)) > delta:
        return "boosted"
    return "shared"


def _shares(counter: Counter) -> dict:
    total = sum(counter.values())
    return {c: (counter[c] / total if total else None) for c in CATEGORIES} | {"sentences": total}


def provenance(distilled, tok, teacher, base, task, cfg, *, delta: float = 1.0) -> dict:
    """Sentence provenance of `distilled`'s greedy answers on `cfg.n` prompts of `cfg.split`
    (models in eval mode; the tokenizer `tok` is the three models' shared one)."""
    from ..data.collate import encode_prompt
    from ..data.text import sentences
    from ..rollout.generate import generate
    from ..rollout.score import score
    from .das import sentence_means, sentence_token_bounds

    examples = task.examples(cfg.split, cfg.n, cfg.seed)
    outs = [o[0] for o in generate(distilled, tok, [e.prompt for e in examples], max_new_tokens=cfg.max_new_tokens,
                                   temperature=0.0, batch_size=cfg.batch_size)]
    prompts = [encode_prompt(tok, e.prompt) for e in examples]
    comps = [o.token_ids for o in outs]
    pad = tok.pad_token_id or 0
    lps = {name: score(m, prompts, comps, batch_size=cfg.batch_size, pad_id=pad)
           for name, m in (("T", teacher), ("S", base), ("D", distilled))}
    overall, by_outcome, by_pos = Counter(), {True: Counter(), False: Counter()}, [Counter() for _ in POSITIONS]
    for k, (e, o) in enumerate(zip(examples, outs)):
        if not o.token_ids:
            continue
        parts = sentences(o.text) if o.text else []
        if not parts:
            continue
        bounds = sentence_token_bounds(tok, o.token_ids, list(accumulate(len(p) for p in parts)))
        means = {name: sentence_means(lps[name][k].logprobs, bounds) for name in lps}
        correct = task.verify(o.text, e.answer, e.prompt)
        counted = [(j, classify(t, s, d, delta)) for j, (t, s, d) in enumerate(zip(means["T"], means["S"], means["D"]))
                   if t is not None and s is not None and d is not None]
        for j, cat in counted:
            overall[cat] += 1
            by_outcome[correct][cat] += 1
            by_pos[min(2, 3 * j // max(1, len(parts)))][cat] += 1
    return {"delta": delta, "answers": len(outs), "overall": _shares(overall),
            "correct": _shares(by_outcome[True]), "incorrect": _shares(by_outcome[False]),
            "by_position": {p: _shares(c) for p, c in zip(POSITIONS, by_pos)}}


__all__ = ["CATEGORIES", "classify", "provenance"]

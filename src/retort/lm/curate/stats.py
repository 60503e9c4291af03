"""Trace statistics: accuracy, pass@k per prompt, length distribution, and perplexity under the
teacher (from the stored log-prob of every sampled token) — the quantities "Not All Correct Answers
Are Equal" (arXiv:2505.14464) uses to compare trace sources."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pyarrow as pa

from ..eval.metrics import pass_at_k


def _ppl(logprob_lists) -> float:
    total = sum(sum(lp) for lp in logprob_lists)
    count = sum(len(lp) for lp in logprob_lists)
    return math.exp(-total / count) if count else float("nan")


def trace_stats(table: pa.Table) -> dict:
    rows = table.num_rows
    if rows == 0:
        return {"rows": 0, "prompts": 0}
    cols = table.select(["prompt_id", "correct", "n_tokens", "finish_reason", "completion_logprobs"]).to_pydict()
    by_prompt: dict[str, list[bool]] = defaultdict(list)
    for pid, ok in zip(cols["prompt_id"], cols["correct"]):
        by_prompt[pid].append(bool(ok))
    n = min(len(v) for v in by_prompt.values())
    lengths = np.array(cols["n_tokens"])
    correct = np.array(cols["correct"], dtype=bool)
    lps = cols["completion_logprobs"]
    stats = {
        "rows": rows,
        "prompts": len(by_prompt),
        "samples_per_prompt": n,
        "accuracy": float(correct.mean()),
        **{f"pass@{k}": float(np.mean([pass_at_k(len(v), sum(v), k) for v in by_prompt.values()]))
           for k in sorted({1, n} | {k for k in (2, 4, 8, 16) if k < n})},
        "prompts_with_no_correct": sum(1 for v in by_prompt.values() if not any(v)),
        "tokens": {"mean": float(lengths.mean()), "p50": float(np.percentile(lengths, 50)),
                   "p90": float(np.percentile(lengths, 90)), "max": int(lengths.max()),
                   "total": int(lengths.sum())},
        "finish_reasons": {r: cols["finish_reason"].count(r) for r in sorted(set(cols["finish_reason"]))},
        "teacher_ppl": _ppl(lps),
        "teacher_ppl_correct": _ppl([lp for lp, ok in zip(lps, correct) if ok]),
        "teacher_ppl_incorrect": _ppl([lp for lp, ok in zip(lps, correct) if not ok]),
        "bytes_per_token_in_memory": table.nbytes / max(1, int(lengths.sum())),
    }
    if "topk" in table.column_names and table.column("topk").null_count < rows:
        stats["topk_bytes_per_token_in_memory"] = table.column("topk").nbytes / max(1, int(lengths.sum()))
    stats["tokens"].update(length_spread(lengths))
    if "difficulty" in table.column_names:
        by_d = accuracy_by_difficulty(table.column("difficulty").to_pylist(), correct)
        if by_d:
            stats["accuracy_by_difficulty"] = by_d
    if "teacher" in table.column_names:
        names = [t for t in table.column("teacher").to_pylist() if t is not None]
        if len(set(names)) > 1:
            stats["by_teacher"] = by_teacher(table)
    return stats


def accuracy_by_difficulty(difficulties, correct) -> dict:
    """{difficulty: {"rows", "accuracy"}} in increasing difficulty, for rows whose task records one
    (built-in tasks' knob, reasoning-gym's `DIFFICULTY` metadata); {} when none does."""
    groups: dict = defaultdict(list)
    for d, ok in zip(difficulties, correct):
        if d is not None:
            groups[d].append(bool(ok))
    return {str(d): {"rows": len(v), "accuracy": float(np.mean(v))} for d, v in sorted(groups.items())}


def length_spread(lengths) -> dict:
    """"Token length diversity" (AM, section 4.5): the std of the lengths, a 10-bin histogram from 0
    to the longest, and the entropy (nats) of that histogram (0: all alike; ln 10 at most)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.size == 0:
        return {"std": float("nan"), "histogram": [], "bin_edges": [], "histogram_entropy": float("nan")}
    counts, edges = np.histogram(lengths, bins=10, range=(0, max(1.0, float(lengths.max()))))
    p = counts[counts > 0] / counts.sum()
    return {"std": float(lengths.std()), "histogram": counts.tolist(), "bin_edges": [float(e) for e in edges],
            "histogram_entropy": float(-(p * np.log(p)).sum())}


def by_teacher(table: pa.Table) -> dict:
    """The statistics of each teacher's rows of a set several teachers sampled (`teacher` column):
    accuracy, pass@k, length mean/std/histogram and its entropy, perplexity under the teacher
    itself, and the mean length by difficulty (does it think longer on harder problems?)."""
    out = {}
    names = table.column("teacher").to_pylist()
    for name in sorted({t for t in names if t is not None}):
        mask = pa.array([t == name for t in names])
        sub = table.filter(mask)
        st = trace_stats(sub.drop(["teacher"]))
        lengths = sub.column("n_tokens").to_pylist()
        diffs = sub.column("difficulty").to_pylist()
        by_d = defaultdict(list)
        for d, n in zip(diffs, lengths):
            by_d[d].append(n)
        st["length_by_difficulty"] = {str(d): float(np.mean(v)) for d, v in sorted(by_d.items(), key=lambda kv: str(kv[0]))}
        shas = {x for x in sub.column("teacher_sha256").to_pylist() if x} if "teacher_sha256" in sub.column_names else set()
        st["weights_sha256"] = sorted(shas)[0] if len(shas) == 1 else None
        out[name] = st
    return out


def row_nll(table: pa.Table, model_name: str, *, batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, tokens) of each row's completion under one reference model,
    the completion tokenised by the reference's own tokenizer, after its prompt."""
    from ..config import ModelConfig
    from ..data.collate import encode_prompt
    from ..models import load_model
    from ..rollout.score import score

    model, tok = load_model(ModelConfig(name=model_name))
    model.eval()
    cols = table.select(["prompt", "completion"]).to_pydict()
    prompts = [encode_prompt(tok, p) for p in cols["prompt"]]
    comps = [tok(c, add_special_tokens=False)["input_ids"] for c in cols["completion"]]
    scored = score(model, prompts, comps, batch_size=batch_size, pad_id=tok.pad_token_id or 0)
    return [(-sum(sc.logprobs), len(sc.logprobs)) for sc in scored]


def perplexity(nll: tuple[float, int]) -> float:
    return math.exp(nll[0] / nll[1]) if nll[1] else float("inf")


def reference_perplexity(table: pa.Table, model_name: str, *, batch_size: int = 16, by: str = "teacher",
                         nll: list | None = None) -> dict:
    """Perplexity of each teacher's completions under one reference model (AM: the sources compared
    under a fixed LM): exp of the mean per-token negative log-likelihood over the teacher's rows
    (`row_nll`). Keyed by teacher (one key, "all", when the set names none)."""
    nll = nll if nll is not None else row_nll(table, model_name, batch_size=batch_size)
    keys = table.column(by).to_pylist() if by in table.column_names else [None] * table.num_rows
    keys = [k or "all" for k in keys]
    total, count = defaultdict(float), defaultdict(int)
    for k, (s, n) in zip(keys, nll):
        total[k] += s
        count[k] += n
    return {k: math.exp(total[k] / count[k]) if count[k] else float("nan") for k in sorted(total)}

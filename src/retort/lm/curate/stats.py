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
    return stats

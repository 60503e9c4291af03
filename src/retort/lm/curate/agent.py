"""`retort curate --agent-filter`: agent distillation's filter of teacher trajectories (Kang et al.,
arXiv 2505.17612; `filter_agent_training_data.py`): keep an episode only when it is correct (score
1), had no parse error, no execution error and did not hit the maximum number of steps."""

from __future__ import annotations

import json

import pyarrow as pa

from ...errors import DataError


def agent_clean(src: str, table: pa.Table) -> tuple[pa.Table, dict]:
    """The rows of `table` that pass the filter, and how many each condition dropped (a row can fail
    several; each is counted under the first it fails: incorrect, parse error, exec error, max steps)."""
    records = table["agent"].to_pylist() if "agent" in table.column_names else [None] * table.num_rows
    if table.num_rows and all(r is None for r in records):
        raise DataError(f"curate --agent-filter: {src} holds no agent episodes (make them with `retort traces "
                        "agent=code`)")
    keep, dropped = [], {"incorrect": 0, "parse_error": 0, "exec_error": 0, "hit_max_steps": 0, "not_agent": 0}
    for i, (ok, rec) in enumerate(zip(table["correct"].to_pylist(), records)):
        if rec is None:
            dropped["not_agent"] += 1
            continue
        a = json.loads(rec)
        why = ("incorrect" if not ok else "parse_error" if a.get("parse_errors") else "exec_error"
               if a.get("exec_errors") else "hit_max_steps" if a.get("hit_max_steps") else None)
        if why is None:
            keep.append(i)
        else:
            dropped[why] += 1
    return table.take(pa.array(keep, type=pa.int64())), {"kept": len(keep), "dropped": dropped}


__all__ = ["agent_clean"]

"""The one rule every ordering in BENCHMARKS.md is stated by, and where its numbers come from.

An ordering "a > b" (or <, >=, <=) over per-seed values *holds* only when every seed agrees
(paired: a_i > b_i for each seed i; unpaired: every a above every b) or when the mean difference is
at least two standard errors of that difference; it *does not hold* when the same is true the
other way; otherwise it is *unresolved*, and the per-seed values go with it. One seed resolves
nothing. A claimed equality ("a ~ b") never holds by this rule (seeds cannot show a difference is
zero): it *does not hold* when a difference is resolved either way, and is unresolved otherwise.

The standard error is of the difference: paired (the same seeds, or repetitions run back to back)
it is std(a_i - b_i) / sqrt(n); unpaired it is sqrt(s_a^2 / n_a + s_b^2 / n_b).

Each benchmark script names its orderings as `Ordering(claim, a, rel, b)`, where `a` and `b` are
key paths into its own results JSON that lead to the per-seed values ("*" maps over a list or a
dict's values; "{seed}" expands over the JSON's `seeds`), and writes `state(results, ORDERINGS)`
into the JSON under `verdicts`; `restate(path, ORDERINGS)` recomputes them from a finished JSON
without rerunning anything (each script's `--verdicts-only`). BENCHMARKS.md prints them with
`markdown()`, and tests/test_benchmarks_doc.py checks that the text and the JSON agree.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

RELATIONS = (">", ">=", "<", "<=", "~")


@dataclass(frozen=True)
class Ordering:
    claim: str  # as BENCHMARKS.md states it, e.g. "DAP > uniform (accuracy; B 6)"
    a: tuple  # key path to a's per-seed values in the results JSON
    rel: str
    b: tuple
    paired: bool = True


def verdict(a: list[float], b: list[float], rel: str = ">", *, paired: bool = True) -> dict:
    """The rule above for "a rel b": {"verdict": holds | does not hold | unresolved, "diff" (mean
    a - b), "se", "z", "every_seed" (1 for a's way, -1 against, 0 neither), "a", "b"}."""
    if rel not in RELATIONS:
        raise ValueError(f"relation {rel!r}: expected one of {', '.join(RELATIONS)}")
    a, b = [float(x) for x in a], [float(x) for x in b]
    if paired and len(a) != len(b):
        raise ValueError(f"paired values need one per seed on each side: {len(a)} vs {len(b)}")
    if not a or not b:
        raise ValueError("no values to compare")
    diff = statistics.mean(a) - statistics.mean(b)
    if paired:
        d = [x - y for x, y in zip(a, b)]
        se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.inf
        up, down = all(x > 0 for x in d), all(x < 0 for x in d)
        up_eq, down_eq = all(x >= 0 for x in d), all(x <= 0 for x in d)
    else:
        sa = statistics.stdev(a) if len(a) > 1 else math.inf
        sb = statistics.stdev(b) if len(b) > 1 else math.inf
        se = math.sqrt(sa**2 / len(a) + sb**2 / len(b))
        up, down = min(a) > max(b), max(a) < min(b)
        up_eq, down_eq = min(a) >= max(b), max(a) <= min(b)
    n = min(len(a), len(b))
    z = diff / se if se > 0 else (math.inf if diff > 0 else -math.inf if diff < 0 else 0.0)
    if n < 2:  # one seed: every seed "agrees" trivially, which shows nothing
        up = down = up_eq = down_eq = False
        z = 0.0 if math.isinf(se) else z
    beyond_up, beyond_down = n >= 2 and z >= 2, n >= 2 and z <= -2
    if rel == "~":
        word = "does not hold" if (up or down or beyond_up or beyond_down) else "unresolved"
        every = 1 if up else -1 if down else 0
    else:
        sign = 1 if rel in (">", ">=") else -1
        strict = rel in (">", "<")
        agree = (up if strict else up_eq) if sign > 0 else (down if strict else down_eq)
        against = down if sign > 0 else up  # every seed strictly the other way
        beyond, beyond_against = (beyond_up, beyond_down) if sign > 0 else (beyond_down, beyond_up)
        word = "holds" if agree or beyond else "does not hold" if against or beyond_against else "unresolved"
        every = 1 if agree else -1 if against else 0
    return {"verdict": word, "diff": diff, "se": None if math.isinf(se) else se,
            "z": None if math.isinf(z) else z, "every_seed": every, "a": a, "b": b, "paired": paired}


def values(results: dict, path: tuple) -> list[float]:
    """The per-seed values at `path` in a results JSON (see the module docstring)."""
    found = [results]
    for key in path:
        nxt = []
        for node in found:
            if key == "*":
                nxt.extend(node.values() if isinstance(node, dict) else node)
            elif isinstance(key, str) and "{seed}" in key:
                nxt.extend(node[key.format(seed=s)] for s in results["seeds"])
            elif isinstance(node, list):
                nxt.append(node[int(key)])
            else:
                nxt.append(node[key])
        found = nxt
    out = []
    for v in found:
        if isinstance(v, dict):  # {"0": value, "1": ...}: per seed, in seed order
            out.extend(v[k] for k in sorted(v, key=lambda k: (len(k), k)))
        elif isinstance(v, list):
            out.extend(v)
        else:
            out.append(v)
    return [float(v) for v in out]


def state(results: dict, orderings: list[Ordering]) -> list[dict]:
    """Every ordering of a script, judged on its results JSON."""
    return [{"claim": o.claim, "rel": o.rel, **verdict(values(results, o.a), values(results, o.b), o.rel,
                                                       paired=o.paired)} for o in orderings]


def restate(path: str | Path, orderings: list[Ordering]) -> list[dict]:
    """Recompute a finished results JSON's `verdicts` in place (no run is repeated)."""
    path = Path(path)
    text = path.read_text()
    results = json.loads(text)
    results["verdicts"] = state(results, orderings)
    indent = len(re.match(r"\{\n( *)", text).group(1)) if re.match(r"\{\n( *)", text) else 1
    path.write_text(json.dumps(results, indent=indent))
    return results["verdicts"]


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def markdown(verdicts: list[dict]) -> str:
    """The orderings as BENCHMARKS.md prints them: one row each, with the per-seed values."""
    lines = ["| ordering | a, per seed | b, per seed | mean diff | se | verdict |", "|---|---|---|---:|---:|---|"]
    for v in verdicts:
        se = "-" if v["se"] is None else _num(v["se"])
        lines.append(f"| {v['claim']} | {' / '.join(_num(x) for x in v['a'])} | "
                     f"{' / '.join(_num(x) for x in v['b'])} | {_num(v['diff'])} | {se} | **{v['verdict']}** |")
    return "\n".join(lines)

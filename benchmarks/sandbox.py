"""The sandbox's cost: milliseconds per trivial call of `retort.sandbox.run`, beside a plain
subprocess of the same interpreter running the same snippet (no namespaces, no limits).

The two arms alternate within each repetition, and which goes first alternates between
repetitions (a shared machine drifts); the result is the ratio of medians and the added
milliseconds, with every measurement kept.

    python benchmarks/sandbox.py                 # writes benchmarks/results/sandbox.json
    python benchmarks/sandbox.py --reps 5 --calls 4 --out /tmp/sandbox.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SNIPPET = "print(6 * 7)"


def sandboxed(snippet: str) -> None:
    from retort.sandbox import run

    res = run(snippet)
    if res.stdout.strip() != "42":
        raise RuntimeError(f"the sandbox printed {res.stdout!r} ({res.stderr[-200:]!r})")


def plain(snippet: str) -> None:
    out = subprocess.run([sys.executable, "-I", "-c", snippet], capture_output=True, text=True, check=True)
    if out.stdout.strip() != "42":
        raise RuntimeError(f"the plain subprocess printed {out.stdout!r}")


ARMS = {"sandbox": sandboxed, "subprocess": plain}


def ms_per_call(arm, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        arm(SNIPPET)
    return 1000 * (time.perf_counter() - t0) / calls


def measure(reps: int, calls: int) -> dict:
    from retort.sandbox import check

    check()
    for arm in ARMS.values():  # warm both (page cache, imports)
        arm(SNIPPET)
    rows = []
    for rep in range(reps):
        order = ["sandbox", "subprocess"] if rep % 2 == 0 else ["subprocess", "sandbox"]
        for name in order:
            rows.append({"rep": rep, "arm": name, "ms_per_call": round(ms_per_call(ARMS[name], calls), 3)})
    med = {name: statistics.median(r["ms_per_call"] for r in rows if r["arm"] == name) for name in ARMS}
    return {"snippet": SNIPPET, "reps": reps, "calls_per_rep": calls, "rows": rows,
            "median_ms": {k: round(v, 3) for k, v in med.items()},
            "added_ms": round(med["sandbox"] - med["subprocess"], 3),
            "ratio": round(med["sandbox"] / med["subprocess"], 3),
            "machine": {"python": platform.python_version(), "platform": platform.platform()}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--calls", type=int, default=20, help="calls per arm per repetition")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sandbox.json"))
    args = ap.parse_args(argv)
    result = {"command": "python benchmarks/sandbox.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              **measure(args.reps, args.calls)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"sandbox: {result['median_ms']['sandbox']:.1f} ms per trivial call, plain subprocess "
          f"{result['median_ms']['subprocess']:.1f} ms (x{result['ratio']:.2f}, +{result['added_ms']:.1f} ms); "
          f"in {args.out}")
    return result


if __name__ == "__main__":
    main()

"""The sandbox's cost: milliseconds per trivial call of `retort.sandbox.run`, beside a plain
subprocess of the same interpreter running the same snippet (no namespaces, no limits).

The two arms alternate within each repetition, and which goes first alternates between
repetitions (a shared machine drifts); the result is the ratio of medians and the added
milliseconds, with every measurement kept.

    python benchmarks/sandbox.py                 # writes benchmarks/results/sandbox.json
    python benchmarks/sandbox.py --reps 5 --calls 4 --out /tmp/sandbox.json

`--traces N` adds the throughput of agent traces against plain traces: the built-in teacher of the
`calc` toy (trained once under `--work`, as `retort teacher task.name=calc` does) samples N
questions greedily, one torch thread, with `retort traces agent=code` (a CodeAct episode: actions run in the sandbox,
observations fed back, up to agent.max_steps) and with plain `retort traces` (one completion per
question, nothing run), each command in its own process, the two alternating which goes first, `--reps`
times (the call arms use --reps too). Per arm: wall seconds of the whole command, questions per
second, generated tokens per second (the trace set's own count: assistant tokens), sandbox calls.

    python benchmarks/sandbox.py --traces 200 --reps 3 --work /tmp/retort-sandbox
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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


def _traces(root: Path, agent: bool, n: int, rep: int, env: dict) -> dict:
    from retort.lm.data.traces import read_manifest

    out = root / f"{'agent' if agent else 'plain'}-{rep}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "retort", "traces", "task.name=calc", "teacher.name=builtin:teacher-calc",
           f"n_prompts={n}", "sampling.n=1", "sampling.temperature=0", "sampling.max_new_tokens=64", "threads=1", f"out={out}",
           *(["agent=code"] if agent else [])]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    stats = read_manifest(out)["stats"]
    tokens = stats["tokens"]["total"]
    row = {"rep": rep, "arm": "agent" if agent else "plain", "wall_s": round(wall, 3), "questions": stats["prompts"],
           "tokens": tokens, "questions_per_s": round(stats["prompts"] / wall, 3), "tokens_per_s": round(tokens / wall, 2),
           "accuracy": stats["accuracy"]}
    if agent:
        row["agent"] = stats.get("agent")
    return row


def measure_traces(n: int, reps: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, RETORT_CACHE=str(work / "cache"))
    teacher = subprocess.run([sys.executable, "-m", "retort", "teacher", "task.name=calc"], env=env,
                             capture_output=True, text=True)
    if teacher.returncode != 0:
        raise SystemExit(f"the calc teacher did not train: {teacher.stderr[-500:]}")
    rows = []
    for rep in range(reps):
        for agent in ((True, False) if rep % 2 == 0 else (False, True)):
            rows.append(_traces(work, agent, n, rep, env))
    mean = {arm: {k: statistics.mean(r[k] for r in rows if r["arm"] == arm)
                  for k in ("wall_s", "questions_per_s", "tokens_per_s")} for arm in ("agent", "plain")}
    se = {arm: {k: statistics.stdev(r[k] for r in rows if r["arm"] == arm) / len(
                  [r for r in rows if r["arm"] == arm]) ** 0.5 if reps > 1 else None
                for k in ("wall_s", "questions_per_s", "tokens_per_s")} for arm in ("agent", "plain")}
    return {"n_prompts": n, "reps": reps, "rows": rows, "mean": mean, "se": se,
            "agent_over_plain_seconds": round(mean["agent"]["wall_s"] / mean["plain"]["wall_s"], 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--calls", type=int, default=20, help="calls per arm per repetition")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sandbox.json"))
    ap.add_argument("--traces", type=int, default=0, metavar="N",
                    help="also time agent traces against plain traces of N calc questions (0: not)")
    ap.add_argument("--work", default="/tmp/retort-sandbox", help="the calc teacher and the trace sets (--traces)")
    args = ap.parse_args(argv)
    result = {"command": "python benchmarks/sandbox.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              **measure(args.reps, args.calls)}
    if args.traces:
        result["traces"] = measure_traces(args.traces, args.reps, Path(args.work))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"sandbox: {result['median_ms']['sandbox']:.1f} ms per trivial call, plain subprocess "
          f"{result['median_ms']['subprocess']:.1f} ms (x{result['ratio']:.2f}, +{result['added_ms']:.1f} ms); "
          f"in {args.out}")
    if args.traces:
        m = result["traces"]["mean"]
        print(f"traces of {args.traces} calc questions: agent {m['agent']['wall_s']:.1f} s "
              f"({m['agent']['questions_per_s']:.2f} q/s), plain {m['plain']['wall_s']:.1f} s "
              f"({m['plain']['questions_per_s']:.2f} q/s)")
    return result


if __name__ == "__main__":
    main()

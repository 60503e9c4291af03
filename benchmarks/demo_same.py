"""`retort demo` of each track from two checkouts, side by side: the same numbers, seed for seed, and
the wall time of each (the arms alternate, old first in even repetitions, new first in odd ones).

    python benchmarks/demo_same.py --old /tmp/old-checkout --tracks classify,lm,diffuse --reps 2

`--old` is a checkout (its `src/` is put first on PYTHONPATH); the new arm is this repository.
Each arm has its own RETORT_CACHE, filled by a first untimed `retort teacher` where the track has one
(unless --cold), so the times compare the demo itself. Writes benchmarks/results/demo_same.json: per
track and arm the wall times, whether every number in results.json (times left out) agrees, and per
track the verdict of benchmarks/_verdict.py on "the new code's demo takes as long as the old's" (paired
by repetition; `--verdicts-only` recomputes it from a results file).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _verdict import Ordering, state

TEACHERS = {"lm": [["teacher"]], "classify": [["teacher", "track=classify", "task.name=digits"]],
            "diffuse": [["teacher", "track=diffuse", "task.name=ring"], ["teacher", "track=diffuse", "task.name=digits"]]}


def orderings(results: dict) -> list[Ordering]:
    return [Ordering(f"{track}: the new code's demo takes as long as the old's", ("tracks", track, "seconds", "new"),
                     "~", ("tracks", track, "seconds", "old")) for track in results["tracks"]]


def _timeless(value):
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items()
                if not re.search(r"time|seconds|_s$|run_dir|path|model", k)}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def scalars(value):
    """The numbers and names of a result, without its samples (lists): what the JSON keeps."""
    if isinstance(value, dict):
        return {k: scalars(v) for k, v in value.items() if not isinstance(v, list)}
    return value


def _run(src: Path, cache: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "RETORT_CACHE": str(cache)}
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "retort.cli", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.time() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="a checkout of the old code")
    ap.add_argument("--tracks", default="classify,lm,diffuse")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--cold", action="store_true", help="no teacher trained beforehand (times include it)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo_same.json"))
    ap.add_argument("--verdicts-only", action="store_true", help="recompute the verdicts of --out; run nothing")
    a = ap.parse_args()
    if a.verdicts_only:
        done = json.loads(Path(a.out).read_text())
        done["verdicts"] = state(done, orderings(done))
        Path(a.out).write_text(json.dumps(done, indent=1))
        return
    work = Path(a.work or tempfile.mkdtemp(prefix="demo-same-"))
    arms = {"old": Path(a.old).resolve() / "src", "new": ROOT / "src"}
    results: dict = {"command": " ".join(sys.argv), "tracks": {}}
    for track in a.tracks.split(","):
        caches = {arm: work / f"cache-{arm}-{track}" for arm in arms}
        if not a.cold:
            for arm, src in arms.items():
                for args in TEACHERS[track]:
                    _run(src, caches[arm], args)
        times: dict = {arm: [] for arm in arms}
        outs: dict = {arm: [] for arm in arms}
        for rep in range(a.reps):
            order = list(arms) if rep % 2 == 0 else list(arms)[::-1]  # arms alternate
            for arm in order:
                out = work / f"demo-{track}-{arm}-{rep}"
                if out.exists():  # a demo reuses what it finds: every timed run starts from nothing
                    raise SystemExit(f"{out} exists; give a new --work directory")
                times[arm].append(_run(arms[arm], caches[arm], ["demo", "--track", track, "--out", str(out)]))
                outs[arm].append(_timeless(json.loads((out / "results.json").read_text())))
                print(track, arm, rep, times[arm][-1], "s", flush=True)
        same = all(o == outs["old"][0] for arm in arms for o in outs[arm])
        results["tracks"][track] = {"seconds": times, "same_numbers": same,
                                    "ratio_new_old": round(sum(times["new"]) / sum(times["old"]), 3),
                                    "results": scalars(outs["new"][0])}
        print(track, "same numbers:", same, "new/old time:", results["tracks"][track]["ratio_new_old"], flush=True)
    results["verdicts"] = state(results, orderings(results))
    Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

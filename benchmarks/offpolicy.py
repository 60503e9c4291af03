"""The off-policy table: the small student (`preset:student`) trained from scratch on the demo's
teacher traces, answers-only, sft and kd (forward KL on the teacher's stored top-8, offline), one
`retort demo --seed S --methods answers,sft,kd` per seed, on the built-in task.

Every row is the demo's own: 2000 steps x 32 sequences at lr 2e-3 (answers-only: 600 steps), on
the demo's trace set (4000 prompts x 1 at temperature 1, top-8 stored; sft keeps the correct
ones), evaluated greedily on the demo's 500 test problems (`eval.seed=7`). Seed S trains every
student with `seed=S`; the teacher (RETORT_CACHE) and its traces (the first seed's directory) are
shared. Each seed is a demo directory under --work, so a finished run is reused when the command is
run again (and a killed one resumes).

    python benchmarks/offpolicy.py --work runs/offpolicy --seeds 0 1 2   # writes benchmarks/results/offpolicy.json
    python benchmarks/offpolicy.py --summarise-only    # recompute means, stds and verdicts of --json; run nothing

Both print the tables as BENCHMARKS.md shows them (`markdown`).

The JSON holds, per row and seed, the greedy test accuracy, the accuracy by problem length
(`by_difficulty`: the number of steps), tokens per answer and the training time from the run's
`summary.json` (seconds of this machine, as busy as it was then: `note` says so); then per row the
mean and std over seeds, and the `verdicts` of ORDERINGS by benchmarks/_verdict.py, paired by seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _results import write_json
from _verdict import Ordering, state
from _verdict import markdown as verdicts_markdown

METHODS = ("answers", "sft", "kd")
SFT = "student: sft on teacher traces"
KD = "student: kd, forward KL on teacher top-8"
ORDERINGS = [Ordering("kd (offline top-8) >= sft on the same traces", ("rows", KD, "accuracy"), ">=",
                      ("rows", SFT, "accuracy"))]
KEPT = ("accuracy", "by_difficulty", "mean_tokens", "train_time_s")


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(results: dict) -> dict:
    """`rows` (per row: per-seed values, mean and std over seeds, accuracy by length averaged over
    seeds) and `verdicts`, from `runs` (per seed: per row, what the demo measured)."""
    rows: dict = {}
    seeds = [s for s in results["seeds"] if str(s) in results["runs"]]
    for s in seeds:
        for label, r in results["runs"][str(s)].items():
            row = rows.setdefault(label, {"accuracy": {}, "train_time_s": {}, "mean_tokens": {}, "by_difficulty": {}})
            for key in ("accuracy", "train_time_s", "mean_tokens"):
                if r.get(key) is not None:
                    row[key][str(s)] = r[key]
            for d, acc in r.get("by_difficulty", {}).items():
                row["by_difficulty"].setdefault(d, {})[str(s)] = acc
    for row in rows.values():
        row.update(_mean_std(list(row["accuracy"].values())))
        times = list(row["train_time_s"].values())
        if times:
            row["train_time_s_range"] = [min(times), max(times)]
        row["by_difficulty_mean"] = {d: statistics.mean(v.values()) for d, v in row["by_difficulty"].items()}
    results["rows"] = rows
    complete = [o for o in ORDERINGS if o.a[1] in rows and o.b[1] in rows
                and len(rows[o.a[1]]["accuracy"]) == len(rows[o.b[1]]["accuracy"]) > 1]
    results["verdicts"] = state(results, complete)
    return results


LABELS = {"student: answers only": "answers only (600 steps)", SFT: "sft on the teacher's correct traces",
          KD: "kd, forward KL on the teacher's stored top-8 (offline)"}


def markdown(results: dict) -> str:
    """The tables BENCHMARKS.md prints, from a summarised results JSON: accuracy per seed with mean
    +- std, tokens per answer and train time; accuracy by problem length (mean over seeds); the
    orderings."""
    seeds = [str(s) for s in results["seeds"]]
    rows = results["rows"]
    lines = ["| row | " + " | ".join(f"seed {s}" for s in seeds) + " | mean +- std | tokens/answer | train time / run |",
             "|---|" + "---:|" * (len(seeds) + 3)]
    for label, row in rows.items():
        accs = [f"{row['accuracy'][s]:.3f}" if s in row["accuracy"] else "-" for s in seeds]
        spread = f"{row['mean']:.3f} +- {row['std']:.3f}" if len(row["accuracy"]) > 1 else "-"
        tokens = statistics.mean(row["mean_tokens"].values())
        low, high = row.get("train_time_s_range", [None, None])
        time = "-" if low is None else f"{low:.0f} s" if round(low) == round(high) else f"{low:.0f}-{high:.0f} s"
        lines.append(f"| {LABELS.get(label, label)} | {' | '.join(accs)} | {spread} | {tokens:.1f} | {time} |")
    lengths = sorted({d for row in rows.values() for d in row["by_difficulty_mean"]}, key=lambda d: (len(d), d))
    lines += ["", "| row, accuracy by problem length (mean over seeds) | "
              + " | ".join(f"{d} steps" for d in lengths) + " |", "|---|" + "---:|" * len(lengths)]
    for label, row in rows.items():
        cells = [f"{row['by_difficulty_mean'][d]:.3f}" if d in row["by_difficulty_mean"] else "-" for d in lengths]
        lines.append(f"| {LABELS.get(label, label)} | {' | '.join(cells)} |")
    if results.get("verdicts"):
        lines += ["", verdicts_markdown(results["verdicts"])]
    return "\n".join(lines)


def _write(path: Path, results: dict) -> None:
    write_json(path, summarise(results))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", default="runs/offpolicy", help="one demo directory per seed (reused when run again)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "offpolicy.json"))
    ap.add_argument("--summarise-only", action="store_true",
                    help="recompute the means, stds and verdicts of --json from its per-seed runs; run nothing")
    args = ap.parse_args()
    out = Path(args.json)
    if args.summarise_only:
        _write(out, json.loads(out.read_text()))
        print(markdown(json.loads(out.read_text())))
        return
    from rich.console import Console

    from retort.cli import _quiet_libraries
    from retort.lm.demo import run_demo
    from retort.paths import demo_dir

    _quiet_libraries()
    console = Console()
    work = Path(args.work)
    results = {"command": " ".join(["python", "benchmarks/offpolicy.py", *sys.argv[1:]]),
               "methods": list(METHODS), "seeds": args.seeds, "runs": {},
               "note": "train_time_s: wall seconds of each run's training on a shared CPU machine, "
                       "measured beside other work (contended); not a speed comparison"}
    first = work / f"seed{args.seeds[0]}"
    for s in args.seeds:
        seed_dir = work / f"seed{s}"
        if s != args.seeds[0] and not (seed_dir / "traces").exists():
            demo_dir(str(seed_dir))  # a demo's directory, so the demo accepts the shared traces in it
            (seed_dir / "traces").symlink_to((first / "traces").resolve(), target_is_directory=True)
        rows = run_demo(str(seed_dir), console=console, methods=METHODS, seed=s)
        results["runs"][str(s)] = {label: {k: r[k] for k in KEPT if k in r} for label, r in rows.items()}
        _write(out, results)  # after every seed: a killed run keeps what it finished
    print(markdown(results))


if __name__ == "__main__":
    main()

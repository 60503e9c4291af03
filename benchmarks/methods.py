"""The methods table: `retort demo` rows over several seeds, mean +- std of test accuracy and tokens
per answer, on the built-in task (the demo's teacher, traces and evaluation: 500 test problems,
greedy).

Seed s trains every student with `seed=s` (initialisation, data order, rollouts); the teacher and its
trace sets are shared (the first seed's directories); curated sets that depend on the warm start
(DAS, mixed-policy) are made per seed. Each seed is a `retort demo --seed s`, so a finished piece is
reused when the command is run again.

    python benchmarks/methods.py --seeds 0 1 2 [--methods sft_more,gkd,...] \\
        [--out runs/methods] [--json benchmarks/results/methods.json]
    python benchmarks/methods.py --verdicts-only     # recompute the verdicts of the results file

The orderings BENCHMARKS.md states (ORDERINGS) are judged by benchmarks/_verdict.py on the per-seed
accuracies, paired by seed, and written under `verdicts`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _verdict import Ordering, restate, state

W = "warm start: sft on teacher traces to 50% train accuracy"
SFT = "warm start + 300 sft steps"
GKD = "warm start + 300 gkd steps (on-policy JSD)"
REDI = "warm start + 300 redi steps (16 pairs/step)"
DPO = "warm start + 300 dpo steps (16 pairs/step)"
SIMPO = "warm start + 300 simpo steps (16 pairs/step)"
HIGH = "warm start + 300 sft steps, T=1 traces (random 1 of 4)"


def _acc(label: str) -> tuple:
    return ("rows", label, "accuracy")


ORDERINGS = [Ordering(claim, _acc(a), rel, _acc(b)) for claim, a, rel, b in [
    ("TSD-KD >= GKD (B)", "warm start + 300 tsd_kd steps", ">=", GKD),
    ("GKD > SeqKD: gkd > sft_more (B)", GKD, ">", SFT),
    ("OPSD > SFT on the same solutions (B)", "warm start + 300 opsd steps (self-distillation)", ">", SFT),
    ("rkl_pg > the warm start", "warm start + 300 rkl_pg steps", ">", W),
    ("rkl_pg < gkd", "warm start + 300 rkl_pg steps", "<", GKD),
    ("REDI (alpha 0.8) > DPO (B)", REDI, ">", DPO),
    ("DPO > SimPO", DPO, ">", SIMPO),
    ("SimPO > sft_more (B: pair objectives > SFT)", SIMPO, ">", SFT),
    ("REDI (alpha 0.8) > its alpha=0 control", REDI, ">", "warm start + 300 redi alpha=0 steps (= sft on the positives)"),
    ("REDI (alpha 0.8) < the warm start", REDI, "<", W),
    ("DPO < the warm start", DPO, "<", W),
    ("SimPO < the warm start", SIMPO, "<", W),
    ("DASD schedule > T=0.6 alone (B)", "... + 150 sft steps, T=1 traces (DASD schedule)", ">",
     "warm start + 300 sft steps, T=0.6 traces"),
    ("DASD schedule > T=1 alone (B)", "... + 150 sft steps, T=1 traces (DASD schedule)", ">", HIGH),
    ("DAS (delta 1) > random 1 of 4 (B)", "warm start + 300 sft steps, T=1 traces (DAS 1 of 4)", ">", HIGH),
    ("DAS (delta 0.25) > random 1 of 4 (B)", "warm start + 300 sft steps, T=1 traces (DAS 1 of 4, delta 0.25)", ">", HIGH),
    ("mixed-policy >= sft_more (B)", "warm start + 300 sft steps, T=1 traces + mixed-policy", ">=", SFT),
    ("curio_sft ~ sft_more in accuracy", "warm start + 300 curio_sft steps", "~", SFT),
    ("chunk_sft < sft_more", "warm start + 300 chunk_sft steps", "<", SFT),
]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="sft_more,gkd,rkl_pg,tsd_kd,opsd,redi,redi_a0,dpo,simpo,curio_sft,chunk_sft,"
                    "dasd_low,dasd_high,dasd_sched,dasd_das,dasd_das_d025,dasd_mixed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/methods")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "methods.json"))
    ap.add_argument("--verdicts-only", action="store_true", help="recompute the verdicts of --json; run nothing")
    args = ap.parse_args()
    if args.verdicts_only:
        restate(args.json, ORDERINGS)
        return
    from rich.console import Console

    from retort.cli import _quiet_libraries
    from retort.lm.demo import TRACE_SETS, run_demo

    _quiet_libraries()
    console = Console()
    methods = [m for m in args.methods.split(",") if m]
    root = Path(args.out)
    per_seed: dict[str, dict[int, dict]] = {}
    for s in args.seeds:
        out = root / f"seed{s}"
        for name in TRACE_SETS:  # the teacher's samples: one copy, in the first seed's directory
            first = root / f"seed{args.seeds[0]}" / name
            if s != args.seeds[0] and not (out / name).exists():
                out.mkdir(parents=True, exist_ok=True)
                (out / name).symlink_to(first.resolve(), target_is_directory=True)
        rows = run_demo(str(out), console=console, methods=methods, seed=s)
        for label, result in rows.items():
            per_seed.setdefault(label, {})[s] = result
    table = {}
    for label, by_seed in per_seed.items():
        acc = [r["accuracy"] for r in by_seed.values()]
        tok = [r["mean_tokens"] for r in by_seed.values()]
        extra = {key: statistics.mean(r[key] for r in by_seed.values())
                 for key in ("pass@4", "mean_entropy") if all(key in r for r in by_seed.values())}
        extra.update({f"{key}_per_seed": {str(s): r[key] for s, r in by_seed.items()}
                      for key in ("pass@4", "mean_entropy") if all(key in r for r in by_seed.values())})
        table[label] = {"accuracy": {str(s): r["accuracy"] for s, r in by_seed.items()},
                        "mean": statistics.mean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                        "mean_tokens": statistics.mean(tok), **extra,
                        "train_time_s": statistics.mean(r.get("train_time_s", 0.0) for r in by_seed.values())}
    print(f"{'row':60s} {'accuracy mean +- std':>22s}  per seed  tokens  pass@4  entropy")
    for label, t in table.items():
        seeds = " ".join(f"{v:.3f}" for v in t["accuracy"].values())
        print(f"{label:60s} {t['mean']:.3f} +- {t['std']:.3f}   {seeds}  {t['mean_tokens']:.1f}"
              f"  {t.get('pass@4', float('nan')):.3f}  {t.get('mean_entropy', float('nan')):.3f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    results = {"command": " ".join(["python", "benchmarks/methods.py", *sys.argv[1:]]), "rows": table}
    results["verdicts"] = state(results, [o for o in ORDERINGS if o.a[1] in table and o.b[1] in table])
    Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

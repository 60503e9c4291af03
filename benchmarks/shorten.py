"""Shortening traces, measured: long traces vs DAP rewrites vs uniform-length rewrites at the same
mean length (methods/llm.md §12.4), and originals vs Retro-Search revisions vs the originals cut
to the revisions' length (§17.4), each distilled into the same student with plain sft, >= 3 seeds.

On the built-in task `detours` (modchain whose worked solutions take detours: wrong steps
corrected after "wait", right steps doubted, a re-check after the answer), with its built-in
teacher, which also learned the task's rewrite prompts (`retort teacher task.name=detours`):

    python benchmarks/shorten.py [--seeds 0,1,2] [--n-prompts 12000] [--steps 1500]
                                 [--work /tmp/retort-shorten] [--out benchmarks/results/shorten.json]

Every step is the CLI a user runs (printed as it goes); a rerun with the same --work skips what is
done. Prints a markdown table: accuracy, tokens per answer, fidelity to the teacher, and the
length/difficulty correlation of the students' answers, mean ± std over seeds.
The orderings BENCHMARKS.md states (ORDERINGS) are judged by benchmarks/_verdict.py and written
under `verdicts`; `--verdicts-only` recomputes them from a finished results file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data_runs import fmt, manifest, save, sh, students, table, workdir  # noqa: E402
from _verdict import Ordering, restate, state

ROOT = Path(__file__).resolve().parent.parent
# the orderings BENCHMARKS.md states, judged by benchmarks/_verdict.py on the per-seed values, paired by seed
ORDERINGS = [Ordering(claim, ("runs", a + "-{seed}", metric), rel, ("runs", b + "-{seed}", metric))
             for claim, a, rel, b, metric in [
                 ("DAP > long traces in accuracy (B 6)", "dap", ">", "long", "accuracy"),
                 ("DAP's answers are shorter than long's", "dap", "<", "long", "mean_tokens"),
                 ("DAP > uniform at the same mean length (B 6)", "dap", ">", "uniform", "accuracy"),
                 ("Retro-Search >= the originals in accuracy (B 11)", "retro", ">=", "long", "accuracy"),
                 ("Retro-Search's answers are shorter than the originals' (B 11)", "retro", "<", "long", "mean_tokens"),
                 ("the originals cut to the revisions' lengths < Retro-Search (§17.4)", "cut", "<", "retro", "accuracy"),
             ]]
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def uniform_budget(traces: Path, want_mean: float) -> int:
    """The one budget whose renderings (the teacher's rule) have the mean length closest to DAP's
    over the same problems: the spec's "uniform-length rewrites at the same average length"."""
    import pyarrow.parquet as pq

    from retort.lm.config import TaskConfig
    from retort.lm.tasks import get_task

    task = get_task(TaskConfig(name="detours"))
    rows = pq.read_table(sorted(traces.glob("part-*.parquet")), columns=["prompt", "correct"]).to_pylist()
    chains = []
    for r in rows:
        if not r["correct"]:
            continue
        nums = re.findall(r"[-+*]?\d", r["prompt"][2:])
        start = int(nums[0])
        value, chain = start, []
        for tok in nums[1:]:
            new = OPS[tok[0]](value, int(tok[1:])) % task.modulus
            chain.append((value, tok[0], int(tok[1:]), new))
            value = new
        chains.append(task.renderings(start, chain))
    best = min(range(3, 120), key=lambda b: abs(statistics.mean(len(task.fitting(r, b)) for r in chains) - want_mean))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-prompts", type=int, default=12000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--work", default="/tmp/retort-shorten")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shorten.json"))
    ap.add_argument("--verdicts-only", action="store_true", help="recompute the verdicts of --out; run nothing")
    args = ap.parse_args()
    if args.verdicts_only:
        restate(args.out, ORDERINGS)
        return
    work, log = workdir(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    times = {}

    times["teacher"] = sh(["teacher", "task.name=detours"], log)
    teacher = json.loads((Path(os.environ["RETORT_CACHE"]) / "teacher-detours" / "teacher.json").read_text())
    traces = work / "traces"
    times["traces"] = sh(["traces", "task.name=detours", "teacher.name=builtin:teacher-detours", f"out={traces}",
                          f"n_prompts={args.n_prompts}", "sampling.n=1", "sampling.temperature=1.0",
                          "sampling.max_new_tokens=192", "shard_prompts=500"], log)
    sets = {"long": traces}
    dap = work / "dap"
    # the longest clean solution of each level (6 characters a step, 3 for the answer line)
    times["dap"] = sh(["curate", str(traces), "--out", str(dap), "--rewrite", "dap",
                       "--budgets", "easy=15,medium=27,hard=39", "--batch-size", "256"], log)
    sets["dap"] = dap
    c = manifest(dap)["stats"]["rewrite_counts"]
    budget = uniform_budget(traces, c["tokens_after"] / max(1, c["kept"]))
    uniform = work / f"uniform{budget}"
    times["uniform"] = sh(["curate", str(traces), "--out", str(uniform), "--rewrite", "uniform",
                           "--budget", str(budget), "--batch-size", "256"], log)
    sets["uniform"] = uniform
    retro = work / "retro"
    times["retro"] = sh(["curate", str(traces), "--out", str(retro), "--retro-search", "--batch-size", "256"], log)
    sets["retro"] = retro
    cut = work / "cut"
    times["cut"] = sh(["curate", str(traces), "--out", str(cut), "--truncate-like", str(retro)], log)
    sets["cut"] = cut

    data = {}
    for name, path in sets.items():
        st = manifest(path)["stats"]
        data[name] = {"rows": st["rows"], "accuracy": st["accuracy"], "mean_tokens": st["tokens"]["mean"],
                      "counts": {k: v for k, v in st.items() if k.endswith("_counts")}}
    base = ["task.name=detours", "student.name=preset:student", f"train.steps={args.steps}", "train.batch_size=32",
            "train.lr=2e-3", "train.warmup_steps=50", "train.save_every=500", "train.log_every=100"]
    runs = students(work, log, sets, seeds, base, times)
    t = table(runs, sets, seeds, ("accuracy", "mean_tokens", "agree_answer", "agree_top1", "kl_ref_model",
                                  "length_difficulty_corr"))
    save(args.out, {"seeds": seeds, "n_prompts": args.n_prompts, "steps": args.steps, "teacher": teacher,
                    "uniform_budget": budget, "data": data, "runs": runs, "table": t,
                    "times_s": {k: round(v, 1) for k, v in times.items()},
                    "verdicts": state({"seeds": seeds, "runs": runs}, ORDERINGS)})
    print("| data | rows | trace tokens | accuracy | tokens/answer | answer agreement | top-1 agreement | "
          "KL to teacher | corr(length, difficulty) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in sets:
        r, d = t[name], data[name]
        print(f"| {name} | {d['rows']} | {d['mean_tokens']:.1f} | {fmt(r['accuracy'])} | {fmt(r['mean_tokens'], 1)} | "
              f"{fmt(r['agree_answer'])} | {fmt(r['agree_top1'])} | {fmt(r['kl_ref_model'])} | "
              f"{fmt(r['length_difficulty_corr'], 2)} |")


if __name__ == "__main__":
    main()

"""Shortening traces, measured: long traces vs DAP rewrites vs uniform-length rewrites at the same
mean length (methods/llm.md §12.4), and originals vs Retro-Search revisions vs the originals cut
to the revisions' length (§17.4), each distilled into the same student with plain sft, >= 3 seeds.

On the built-in task `detours` (modchain whose worked solutions take detours: wrong steps
corrected after "wait", right steps doubted, a re-check after the answer), with its built-in
teacher, which also learned the task's rewrite prompts (`retort teacher task.name=detours`):

    python benchmarks/shorten.py [--seeds 0,1,2] [--n-prompts 12000] [--steps 1500]
                                 [--work /tmp/retort-shorten] [--out benchmarks/results/shorten.json]

or on reasoning-gym's `chain_sum` in its detours rendering (`retort.lm.tasks.rg_detours`):

    python benchmarks/shorten.py --task rg:chain_sum --task-arg task.difficulty.rendering=detours \
        --task-arg task.difficulty.max_digits=1 --task-arg task.difficulty.max_terms=5 \
        --teacher-arg train.steps=5000 --out benchmarks/results/shorten_rg.json

DAP's budgets are each level's longest clean solution over the traces' problems (`--budgets` sets
them); the uniform budget is the one whose renderings come closest to DAP's mean length. Every step
is the CLI a user runs (printed as it goes); a rerun with the same --work skips what is done.
Prints a markdown table: accuracy, tokens per answer, fidelity to the teacher, and the
length/difficulty correlation of the students' answers, mean ± std over seeds.
The orderings BENCHMARKS.md states (ORDERINGS) are judged by benchmarks/_verdict.py and written
under `verdicts`; `--verdicts-only` recomputes them from a finished results file.
"""

from __future__ import annotations

import argparse
import json
import os
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


def _problems(task, traces: Path) -> list[tuple[list[str], int]]:
    """(renderings by the teacher's rule, difficulty) of each correct trace's problem."""
    import pyarrow.parquet as pq

    rows = pq.read_table(sorted(traces.glob("part-*.parquet")), columns=["prompt", "correct", "difficulty"]).to_pylist()
    return [(task.renderings_for(r["prompt"]), r["difficulty"]) for r in rows if r["correct"]]


def dap_budgets(task, traces: Path) -> str:
    """Each level's longest clean solution (the steps and the answer, no detour, no re-check), as
    `--budgets` takes them: DAP's rewrites are then the clean steps."""
    longest = {}
    for versions, difficulty in _problems(task, traces):
        level = task.level(difficulty)
        longest[level] = max(longest.get(level, 0), len(versions[1]))
    return ",".join(f"{level}={longest[level]}" for level in ("easy", "medium", "hard") if level in longest)


def uniform_budget(task, traces: Path, want_mean: float) -> int:
    """The one budget whose renderings (the teacher's rule) have the mean length closest to DAP's
    over the same problems: the spec's "uniform-length rewrites at the same average length"."""
    chains = [versions for versions, _ in _problems(task, traces)]
    return min(range(3, 120), key=lambda b: abs(statistics.mean(len(task.fitting(r, b)) for r in chains) - want_mean))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="detours", help="a task whose teacher learns rewrite prompts: detours, or "
                                                      "rg:chain_sum with task.difficulty.rendering=detours")
    ap.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a task option for every command, e.g. task.difficulty.rendering=detours (repeatable)")
    ap.add_argument("--teacher-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="an option for `retort teacher` only, e.g. train.steps=5000 (repeatable)")
    ap.add_argument("--budgets", default=None, help="DAP's budgets (easy=N,medium=N,hard=N); default: each "
                                                    "level's longest clean solution")
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

    task_args = [f"task.name={args.task}", *args.task_arg]
    times["teacher"] = sh(["teacher", *task_args, *args.teacher_arg], log)
    from retort.config import load_config
    from retort.lm.config import TracesRun
    from retort.lm.tasks import get_task

    task = get_task(load_config(TracesRun, None, task_args).task)  # as `retort traces` reads the options
    cache = Path(os.environ["RETORT_CACHE"]) / f"teacher-{args.task.replace(':', '-')}"
    teacher = json.loads((cache / "teacher.json").read_text())
    traces = work / "traces"
    times["traces"] = sh(["traces", *task_args, f"teacher.name=builtin:teacher-{args.task}", f"out={traces}",
                          f"n_prompts={args.n_prompts}", "sampling.n=1", "sampling.temperature=1.0",
                          "sampling.max_new_tokens=192", "shard_prompts=500"], log)
    sets = {"long": traces}
    dap = work / "dap"
    # the longest clean solution of each level (detours: 6 characters a step, 3 for the answer line,
    # easy=15,medium=27,hard=39)
    budgets = args.budgets or dap_budgets(task, traces)
    times["dap"] = sh(["curate", str(traces), "--out", str(dap), "--rewrite", "dap",
                       "--budgets", budgets, "--batch-size", "256"], log)
    sets["dap"] = dap
    c = manifest(dap)["stats"]["rewrite_counts"]
    budget = uniform_budget(task, traces, c["tokens_after"] / max(1, c["kept"]))
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
    base = [*task_args, "student.name=preset:student", f"train.steps={args.steps}", "train.batch_size=32",
            "train.lr=2e-3", "train.warmup_steps=50", "train.save_every=500", "train.log_every=100"]
    runs = students(work, log, sets, seeds, base, times)
    t = table(runs, sets, seeds, ("accuracy", "mean_tokens", "agree_answer", "agree_top1", "kl_ref_model",
                                  "length_difficulty_corr"))
    save(args.out, {"seeds": seeds, "task": args.task, "task_args": args.task_arg, "n_prompts": args.n_prompts,
                    "steps": args.steps, "teacher": teacher, "dap_budgets": budgets, "uniform_budget": budget,
                    "data": data, "runs": runs, "table": t, "times_s": {k: round(v, 1) for k, v in times.items()},
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

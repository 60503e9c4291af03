"""Teacher-guided selection, measured (methods/llm.md §14.4, Appendix B 9): of a teacher's traces
with several correct samples per prompt, keep one per prompt by (a) the teacher-guided (DAS)
score, (b) at random, (c) the highest likelihood under the student; train the same student on
each with plain sft, >= 3 seeds. Expected: (a) > (b) > (c).

    python benchmarks/das_select.py [--task detours] [--seeds 0,1,2] [--n-prompts 2000] [--samples 4]
                                    [--warm-steps 200] [--steps 1000] [--work /tmp/retort-das]
    python benchmarks/das_select.py --task rg:chain_sum --task-arg task.difficulty.max_digits=1 \
        --task-arg task.difficulty.max_terms=5 --teacher-arg train.steps=2500 --n-prompts 6000 --steps 1500 \
        --out benchmarks/results/das_select_rg.json

The student that scores (and is then trained) is the small preset warmed up briefly on the task's
worked solutions (`--warm-steps`): a student that knows the format but not the task, as a
pretrained base model does. Every step is the CLI a user runs; a rerun skips what is done.
The orderings BENCHMARKS.md states (ORDERINGS) are judged by benchmarks/_verdict.py and written
under `verdicts`; `--verdicts-only` recomputes them from a finished results file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data_runs import fmt, manifest, save, sh, students, table, workdir  # noqa: E402
from _verdict import Ordering, restate, state

ROOT = Path(__file__).resolve().parent.parent
# the orderings BENCHMARKS.md states, judged by benchmarks/_verdict.py on the per-seed values, paired by seed
ORDERINGS = [Ordering(claim, ("runs", a + "-{seed}", metric), rel, ("runs", b + "-{seed}", metric))
             for claim, a, rel, b, metric in [
                 ("teacher-guided (DAS) > random (§14.4, B 9)", "das", ">", "random", "accuracy"),
                 ("random > the student's likeliest (§14.4, B 9)", "random", ">", "likeliest", "accuracy"),
                 ("the likeliest's students write longer answers than DAS's", "likeliest", ">", "das", "mean_tokens"),
             ]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="detours")
    ap.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a task option for every command, e.g. task.difficulty.max_digits=1 (repeatable); "
                         "rg:chain_sum as calibrated in BENCHMARKS: task.difficulty.max_digits=1 and max_terms=5")
    ap.add_argument("--teacher-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="an option for `retort teacher` only, e.g. train.steps=2500 (repeatable)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-prompts", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--warm-steps", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--work", default="/tmp/retort-das")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "das_select.json"))
    ap.add_argument("--verdicts-only", action="store_true", help="recompute the verdicts of --out; run nothing")
    args = ap.parse_args()
    if args.verdicts_only:
        restate(args.out, ORDERINGS)
        return
    work, log = workdir(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    task = [f"task.name={args.task}", *args.task_arg]
    ev = ["eval.n=500", f"eval.max_new_tokens={args.max_new_tokens}", "eval.batch_size=250"]  # the warm-up's

    sh(["teacher", *task, *args.teacher_arg], log)
    traces = work / "traces"
    sh(["traces", *task, f"teacher.name=builtin:teacher-{args.task}", f"out={traces}", f"n_prompts={args.n_prompts}",
        f"sampling.n={args.samples}", "sampling.temperature=1.0", f"sampling.max_new_tokens={args.max_new_tokens}",
        "shard_prompts=500"], log)
    warm = work / "warm"
    if not (warm / "summary.json").is_file():
        sh(["train", "method=sft", *task, "student.name=preset:student", "data.source=solutions", f"out={warm}",
            f"train.steps={args.warm_steps}", "train.batch_size=32", "train.lr=2e-3", "train.warmup_steps=20",
            "train.save_every=0", *ev], log)
    sets = {}
    for rule in ("das", "random", "likeliest"):
        out = work / f"sel-{rule}"
        if not (out / "manifest.json").is_file():
            sh(["curate", str(traces), "--out", str(out), "--correct", "--das", str(warm / "model"), "--das-keep", "1",
                "--das-rule", rule], log)
        sets[rule] = out
    base = [*task, f"student.name={warm / 'model'}", f"train.steps={args.steps}", "train.batch_size=32",
            "train.lr=2e-3", "train.warmup_steps=50", "train.save_every=500", "train.log_every=100"]
    runs = students(work, log, sets, seeds, base)
    t = table(runs, sets, seeds, ("accuracy", "mean_tokens", "agree_answer", "agree_top1", "kl_ref_model"))
    data = {r: {"rows": manifest(p)["stats"]["rows"], "trace_tokens": manifest(p)["stats"]["tokens"]["mean"],
                "das": manifest(p)["stats"].get("das")} for r, p in sets.items()}
    warm_eval = json.loads((warm / "summary.json").read_text())["eval"]
    save(args.out, {"seeds": seeds, "task": args.task, "warm_accuracy": warm_eval.get("accuracy"), "data": data,
                    "runs": runs, "table": t, "verdicts": state({"seeds": seeds, "runs": runs}, ORDERINGS)})

    print(f"warm student (scorer and starting point): accuracy {warm_eval.get('accuracy'):.3f}")
    print("| selection | rows | trace tokens | DAS score of kept | student log-prob of kept | accuracy | "
          "tokens/answer | answer agreement | top-1 agreement | KL to teacher |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sets:
        x, d = t[r], data[r]
        das = d["das"] or {}
        print(f"| {r} | {d['rows']} | {d['trace_tokens']:.1f} | {das.get('score_mean_kept', 0):.3f} | "
              f"{das.get('student_lp_mean_kept', 0):.3f} | {fmt(x['accuracy'])} | {fmt(x['mean_tokens'], 1)} | "
              f"{fmt(x['agree_answer'])} | {fmt(x['agree_top1'])} | {fmt(x['kl_ref_model'])} |")


if __name__ == "__main__":
    main()

"""LoRID, measured (methods/llm.md §9.4): three LoRA reasoners on one base with the consistency
iteration vs IR alone (plain CoT distillation) vs DR alone (greedy), and LoRID's mean iterations,
>= 3 seeds.

On a built-in task with its built-in teacher, whose traces get their knowledge by the task's rule
(the tiny teacher cannot write it: `curate --knowledge --knowledge-rule`). The base is the
student preset trained briefly on bare answers (`--base-steps`; it knows the format, not the
working), or the model `--base` names; each seed trains the three adapters on it
(`retort train method=sft student.lora.r=R`, one run per role) and evaluates them with
`retort eval --lorid`:

    python benchmarks/lorid.py [--task modchain] [--seeds 0,1,2] [--n-prompts 4000] [--steps 600]
                               [--work /tmp/retort-lorid] [--out benchmarks/results/lorid.json]

`--traces DIR` uses a trace set already made (no teacher, no sampling). Every step is the CLI a
user runs (printed as it goes); a rerun with the same --work skips what is done. Prints a markdown
table; the orderings BENCHMARKS.md would state (ORDERINGS) are judged by benchmarks/_verdict.py and
written under `verdicts`; `--verdicts-only` recomputes them from a finished results file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data_runs import save, sh, workdir
from _verdict import Ordering, restate, state

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("ir", "kg", "dr")
ORDERINGS = [
    Ordering("LoRID (IR+KG+DR, consistency) > IR alone (accuracy; §9.4)", ("runs", "{seed}", "lorid"), ">",
             ("runs", "{seed}", "ir")),
    Ordering("IR alone > DR alone (accuracy; §9.4)", ("runs", "{seed}", "ir"), ">", ("runs", "{seed}", "dr")),
]


def run_seed(work: Path, log: Path, know: Path, base: str, seed: int, args, task_args: list[str]) -> dict:
    """The three adapters of one seed and their evaluation: {lorid, ir, dr, mean_iterations, agreed}."""
    runs = {}
    for role in ROLES:
        out = work / f"{role}-{seed}"
        if not (out / "adapter" / "adapter_config.json").is_file():
            sh(["train", "method=sft", *task_args, "data.source=traces", f"data.traces={know / role}",
                f"student.name={base}", f"student.lora.r={args.rank}", f"student.lora.alpha={2 * args.rank}",
                f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
                "train.warmup_steps=20", "train.save_every=0", "train.eval_every=0", "eval.n=8",
                f"seed={seed}", f"out={out}"], log)
        runs[role] = out
    result = work / f"eval-{seed}.json"
    if not result.is_file():
        sh(["eval", *task_args, "--lorid", ",".join(str(runs[r]) for r in ROLES),
            f"--lorid-rounds={args.rounds}", f"eval.n={args.eval_n}", f"eval.max_new_tokens={args.max_new_tokens}",
            f"eval.seed={1234 + seed}", "--json", str(result)], log)
    ev = json.loads(result.read_text())
    return {"lorid": ev["lorid"]["accuracy"], "ir": ev["lorid:ir"]["accuracy"], "dr": ev["lorid:dr"]["accuracy"],
            "mean_iterations": ev["lorid"]["mean_iterations"], "agreed": ev["lorid"]["agreed"]}


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="modchain", help="a built-in task with a knowledge rule (modchain, detours, vars)")
    ap.add_argument("--traces", default=None, help="a trace set already made (skips the teacher and sampling)")
    ap.add_argument("--base", default=None, help="the base model of the three adapters (default: the student "
                                                 "preset trained on bare answers for --base-steps)")
    ap.add_argument("--student", default="preset:student", help="the preset the default base is trained from")
    ap.add_argument("--base-steps", type=int, default=300)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-prompts", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--eval-n", type=int, default=300)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--work", default="/tmp/retort-lorid")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lorid.json"))
    ap.add_argument("--verdicts-only", action="store_true", help="recompute the verdicts of --out; run nothing")
    args = ap.parse_args(argv)
    if args.verdicts_only:
        restate(args.out, ORDERINGS)
        return None
    work, log = workdir(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    task_args = [f"task.name={args.task}"]
    traces = Path(args.traces) if args.traces else work / "traces"
    if not args.traces and not (traces / "manifest.json").is_file():
        sh(["teacher", *task_args], log)
        sh(["traces", *task_args, f"teacher.name=builtin:teacher{'' if args.task == 'modchain' else '-' + args.task}",
            f"out={traces}", f"n_prompts={args.n_prompts}", "sampling.n=1", "sampling.max_new_tokens=128"], log)
    know = work / "know"
    if not (know / "dr" / "manifest.json").is_file():
        sh(["curate", str(traces), "--out", str(know), "--knowledge", "--knowledge-rule"], log)
    base = args.base
    if base is None:
        out = work / "base"
        if not (out / "model" / "config.json").is_file():
            sh(["train", "method=sft", *task_args, "data.source=answers", f"student.name={args.student}",
                f"train.steps={args.base_steps}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
                "train.save_every=0", "train.eval_every=0", "eval.n=8", f"out={out}"], log)
        base = str(out / "model")
    runs = {str(seed): run_seed(work, log, know, base, seed, args, task_args) for seed in seeds}
    table = {k: (statistics.mean(r[k] for r in runs.values()),
                 statistics.stdev(r[k] for r in runs.values()) if len(runs) > 1 else 0.0)
             for k in ("lorid", "ir", "dr", "mean_iterations", "agreed")}
    result = {"seeds": seeds, "task": args.task, "base": base, "n_prompts": args.n_prompts, "steps": args.steps,
              "rank": args.rank, "rounds": args.rounds, "eval_n": args.eval_n, "runs": runs, "table": table,
              "verdicts": state({"seeds": seeds, "runs": runs}, ORDERINGS)}
    save(args.out, result)
    print("| row | accuracy |\n|---|---|")
    for name, key in (("LoRID (IR+KG+DR, consistency)", "lorid"), ("IR alone (greedy)", "ir"),
                      ("DR alone (greedy)", "dr")):
        print(f"| {name} | {table[key][0]:.3f} ± {table[key][1]:.3f} |")
    print(f"\nmean iterations {table['mean_iterations'][0]:.2f} ± {table['mean_iterations'][1]:.2f}, "
          f"agreed {table['agreed'][0]:.2f}")
    return result


if __name__ == "__main__":
    main()

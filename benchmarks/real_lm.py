"""The methods table on real models (issue 28): the packaged Qwen2.5-Coder-0.5B-Instruct teaching
SmolLM2-135M-Instruct (a different tokenizer) and a layer-pruned Qwen (the same tokenizer) on
reasoning-gym tasks, >= 3 seeds.

    python benchmarks/real_lm.py [--task arith chain] [--seeds 0 1 2] [--size smoke|full]
                                 [--rows sft kd_hybrid ...] [--work /tmp/retort-real-lm]
                                 [--json benchmarks/results/real_lm.json] [--keep-going] [--verdicts-only]

Per task (TASKS; every command asks for the number only, `task.answer=final_number`, the format the
0.5B teacher follows):
1. `gap`: the teacher and the untrained student on --gap-n held-out problems (`retort eval`); the
   task qualifies when the teacher is >= 30 points ahead (issue 28). A task that does not qualify
   stops here (recorded as such) unless --keep-going (--size smoke always goes on).
2. `traces`: the teacher answers --prompts train problems, `samples` each at temperature 0.7, with
   its top-16 log-probs (offline kd); `retort curate --correct` keeps the correct ones (the data of
   every offline row) and `retort curate --correct --das smollm2-135m-instruct --das-keep 1` one
   per prompt by DASD's divergence-aware score against the untrained student.
3. per seed, the rows (ROWS), each `retort train` at the same steps, batch and lr; SmolLM2 through
   LoRA (r=16, alpha=32 on attention and MLP, lr 2e-4, max_len 160: demo_real's students):
   - `sft`: sft on the correct traces (sequence-level KD);
   - `sft_das`: sft on the DAS selection. Caveat, seen in the smoke run: asked for the number
     only, a prompt's correct samples are one and the same string ("13", "13"), so DAS has
     nothing to choose between and this row is sft on one copy of each correct trace (the
     `sft` row sees each twice); a DAS comparison that means something needs answers with
     reasoning (which the 0.5B teacher did not close within 64 tokens in after_distill's trial);
   - `kd_uld`, `kd_hybrid`: cross-tokenizer kd offline on the same correct traces (the teacher's
     stored top-16; ULD, and GOLD's hybrid), ce_weight 0.5 as demo_real (token-level KD);
   - `gkd`: GKD on-policy (lmbda 1: every batch the student's own samples, 24 new tokens) with
     the cross-tokenizer hybrid loss against the online teacher, so forward KL on the shared
     tokens and ULD on the rest (retort refuses GKD's JSD with a cross-tokenizer loss); the
     traces give the prompts only;
   - `hidden`: the same-tokenizer pair: a Qwen cut to 12 of its 24 decoder layers
     (`student.keep_layers=12`, a contiguous block chosen by retort's prune: layers 5-16 go),
     trained through LoRA r=64 (alpha 128, lr 2e-4), online logit KD (forward KL, ce_weight 0.5)
     plus hidden-state MSE at layer pairs 6:12 and 12:24 (its middle and final states against
     the teacher's). LoRA rather than every weight: training all of them ran (1 step in the
     smoke probe) but its checkpoint with AdamW's state is ~5 GB, more than this machine's disk
     had free. The slowest row on CPU (a 0.5B teacher forward and a 12-layer backward per step);
     optional by --rows like every other.
4. `eval`: `retort eval --fidelity-to teacher` of the teacher and the untrained student once, and per
   seed of the teacher and that seed's students (the same --eval-n held-out problems, greedy,
   32 new tokens): accuracy, no-answer rate, fidelity to the teacher (`agree_answer`: the same
   final answer), tokens per answer. Each training run's train time (summary.json) and peak RSS
   (the `retort train` process's ru_maxrss, from os.wait4) go beside them.

The JSON (--json; merged into what is there, per task / row / seed) holds each command as typed,
per task the gap check, per row and metric the per-seed values and their mean, the gap recovered
by the best SmolLM2 row (mean over seeds: (best - student) / (teacher - student); target >= 0.5)
and the two orderings of benchmarks/_verdict.py (token-level KD >= sequence-level KD at equal
data; on-policy >= off-policy). The teacher's and the untrained student's values are the same for
every seed (greedy decoding of the same models) and are written per seed so that every ordering
pairs by seed.

Runtime (an estimate, not a measurement of a full run; the smoke run's commands all ran, at
tiny counts, under a load of 4-5 on this 2-core machine): on 2 quiet cores each load of the
packaged Qwen (GGUF de-quantised by transformers) costs ~80 s and it happens in the gap check,
traces, eval-base, and per seed in gkd, hidden (twice) and the seed's eval; Qwen answers ~1.2 s
per prompt, the untrained SmolLM2 ~2 s (it writes sentences; 32 new tokens). Per task: gap check
~6 min, traces of 320 x 2 samples ~15 min, curate + DAS ~3 min, eval-base ~13 min; per seed:
sft, sft_das ~5-8 min each, kd_uld, kd_hybrid ~6-10 min each, gkd ~10-15 min (rollouts and the
online teacher every step), hidden ~10-25 min (LoRA: 2 steps of 2 took 17 s under that load; every weight: 1 step 46 s),
the seed's eval of 7 models on 200 problems ~20 min. About 1.5-2 h per seed, 5-6.5 h per task,
11-13 h for both tasks and 3 seeds; without `hidden` (--rows sft sft_das kd_uld kd_hybrid gkd)
about 2 h less per task.

Disk: every trained row exports its whole model for the evaluation (517 MB per SmolLM2 LoRA row,
~1.4 GB for the pruned Qwen): ~4 GB per (task, seed), ~24 GB for the full run; a run's checkpoint
is removed once it has finished, and --drop-models removes a seed's models once its eval is written. The smoke run filled this machine's disk with the pruned Qwen's
checkpoints (AdamW state) before that.

Everything is kept under --work: the traces once per task, each run once per (row, seed); a rerun
skips what is complete and a killed `retort train` resumes from its newest checkpoint (--resume).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_json
from _verdict import Ordering, state

ROOT = Path(__file__).resolve().parent.parent
RETORT = [str(Path(sys.executable).parent / "retort")]
TEACHER = "qwen2.5-coder-0.5b-instruct"
STUDENT = "smollm2-135m-instruct"
ANSWER = "task.answer=final_number"
# demo_real's arithmetic (Qwen ~0.88 against SmolLM2 0.12-0.20 there), and a multi-step candidate:
# chain_sum of 3-4 one-digit terms (+ and - only, several steps); its gap is measured by the gap step.
TASKS = {
    "arith": ["task.name=rg:basic_arithmetic", ANSWER, "task.difficulty.min_terms=2", "task.difficulty.max_terms=2",
              "task.difficulty.min_digits=1", "task.difficulty.max_digits=1"],
    "chain": ["task.name=rg:chain_sum", ANSWER, "task.difficulty.min_terms=3", "task.difficulty.max_terms=4",
              "task.difficulty.min_digits=1", "task.difficulty.max_digits=1"],
}
GAP_MIN = 0.30  # issue 28: the teacher beats the untrained student by >= 30 points
LORA = [f"student.name={STUDENT}", "student.lora.r=16", "student.lora.alpha=32", "train.lr=2e-4"]
ROWS = {  # name: (label, the row's own overrides)
    "sft": ("sft on correct traces", ["method=sft", *LORA]),
    "sft_das": ("sft on the DAS selection", ["method=sft", *LORA]),
    "kd_uld": ("xtok kd offline, ULD", ["method=kd", "method_args.teacher=offline", "method_args.cross_tokenizer=uld",
                                        "method_args.ce_weight=0.5", f"teacher.name={TEACHER}", *LORA]),
    "kd_hybrid": ("xtok kd offline, hybrid", ["method=kd", "method_args.teacher=offline",
                                              "method_args.cross_tokenizer=hybrid", "method_args.ce_weight=0.5",
                                              f"teacher.name={TEACHER}", *LORA]),
    "gkd": ("gkd on-policy, xtok hybrid", ["method=gkd", "method_args.lmbda=1.0", "method_args.divergence=forward_kl",
                                            "method_args.cross_tokenizer=hybrid", "method_args.max_new_tokens=24",
                                            f"teacher.name={TEACHER}", *LORA]),
    "hidden": ("hidden + logit kd, pruned Qwen (same tokenizer)",
               ["method=kd", "method_args.teacher=online", "method_args.ce_weight=0.5", "method_args.hidden=6:12,12:24",
                f"teacher.name={TEACHER}", f"student.name={TEACHER}", "student.keep_layers=12", "student.lora.r=64",
                "student.lora.alpha=128", "train.lr=2e-4"]),
}
SMOL_ROWS = ("sft", "sft_das", "kd_uld", "kd_hybrid", "gkd")  # the rows the SmolLM2 gap is recovered by
METRICS = {"accuracy": "accuracy", "no_answer_rate": "no_answer_rate", "fidelity": "agree_answer",
           "tokens_per_answer": "mean_tokens"}


@dataclass(frozen=True)
class Size:
    gap_n: int        # held-out problems of the gap check
    prompts: int      # train prompts the teacher answers
    samples: int      # teacher samples per prompt (DAS keeps one of them)
    steps: int        # training steps of every row
    batch_size: int   # sequences per step
    eval_n: int       # held-out problems of the final evaluation


SIZES = {"smoke": Size(gap_n=4, prompts=4, samples=2, steps=2, batch_size=2, eval_n=4),
         "full": Size(gap_n=64, prompts=320, samples=2, steps=40, batch_size=8, eval_n=200)}
EVAL = ["eval.seed=7", "eval.max_new_tokens=32"]


@dataclass(frozen=True)
class Step:
    name: str        # gap | traces | correct | das | ROW-SEED | eval-base | eval-SEED
    argv: tuple      # the retort command's arguments
    out: str         # what it writes (a directory, or the eval's JSON)

    def shell(self) -> str:
        return "retort " + " ".join(shlex.quote(a) for a in self.argv)


def _eval(task_args: list, models: dict, n: int, out: Path) -> tuple:
    return ("eval", *task_args, *(x for label, m in models.items() for x in ("-m", f"{label}={m}")),
            "--fidelity-to", "teacher", f"eval.n={n}", *EVAL, f"eval.batch_size={min(50, n)}", "--json", str(out))


def plan(task: str, work: Path, size: Size, seeds: list[int], rows: list[str]) -> list[Step]:
    """Every command of one task, in order (see the module docstring)."""
    t = work / task
    task_args = TASKS[task]
    traces, correct, das = t / "traces", t / "correct", t / "das"
    steps = [
        Step("gap", _eval(task_args, {"teacher": TEACHER, "student": STUDENT}, size.gap_n, t / "gap.json"),
             str(t / "gap.json")),
        Step("traces", ("traces", *task_args, f"teacher.name={TEACHER}", f"n_prompts={size.prompts}",
                        f"sampling.n={size.samples}", "sampling.temperature=0.7", "sampling.topk=16",
                        "sampling.max_new_tokens=16", f"shard_prompts={min(64, size.prompts)}",
                        f"batch_size={min(32, size.prompts * size.samples)}", f"out={traces}"), str(traces)),
        Step("correct", ("curate", str(traces), "--correct", "--out", str(correct), "--overwrite"), str(correct)),
    ]
    if "sft_das" in rows:
        steps.append(Step("das", ("curate", str(traces), "--correct", "--das", STUDENT, "--das-keep", "1",
                                  "--out", str(das), "--overwrite"), str(das)))
    train = [*task_args, "data.source=traces", "data.max_len=160", f"train.steps={size.steps}",
             f"train.batch_size={size.batch_size}", f"data.n_train={size.steps * size.batch_size}",
             f"train.warmup_steps={max(1, size.steps // 10)}", f"train.save_every={max(1, size.steps // 4)}",
             f"train.log_every={max(1, size.steps // 10)}", "train.keep_checkpoints=1", "eval.n=1", *EVAL]  # the real eval is step 4
    if size.eval_n != size.gap_n:  # else the gap check is the base evaluation (the same problems)
        steps.append(Step("eval-base", _eval(task_args, {"teacher": TEACHER, "student": STUDENT}, size.eval_n,
                                             t / "eval-base.json"), str(t / "eval-base.json")))
    for seed in seeds:
        for row in rows:
            out = t / f"{row}-{seed}"
            data = das if row == "sft_das" else correct
            steps.append(Step(f"{row}-{seed}", ("train", "--resume", *ROWS[row][1], *train, f"data.traces={data}",
                                                f"seed={seed}", f"out={out}"), str(out)))
        models = {"teacher": TEACHER, **{row: str(t / f"{row}-{seed}" / "model") for row in rows}}
        steps.append(Step(f"eval-{seed}", _eval(task_args, models, size.eval_n, t / f"eval-{seed}.json"),
                          str(t / f"eval-{seed}.json")))
    return steps


def _complete(step: Step) -> bool:
    out = Path(step.out)
    if step.argv[0] == "eval":  # and it has every model the step asks for (a row added later: again)
        labels = [step.argv[i + 1].split("=", 1)[0] for i, a in enumerate(step.argv) if a == "-m"]
        try:
            return set(labels) <= set(json.loads(out.read_text()))
        except (OSError, ValueError):
            return False
    if step.argv[0] == "train":
        return (out / "summary.json").is_file() and (out / "peak_rss.json").is_file()
    try:
        return bool(json.loads((out / "manifest.json").read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def run_step(step: Step, log: Path) -> None:
    """`retort ARGV`, its output appended to `log`; a training run's peak RSS (the process's
    ru_maxrss) and wall time are kept beside it in peak_rss.json. Exits on failure."""
    print(f"$ {step.shell()}", flush=True)
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {step.shell()}\n")
        f.flush()
        proc = subprocess.Popen(RETORT + list(step.argv), stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.exit(f"{step.name} failed ({code}); see {log}")
    if step.argv[0] == "train":
        Path(step.out, "peak_rss.json").write_text(json.dumps(
            {"peak_rss_bytes": usage.ru_maxrss * 1024, "wall_seconds": round(time.time() - t0, 1)}))
        # the finished run's checkpoint (this run wrote it) is only for a resume: 120 MB for a LoRA
        # student, ~5 GB with AdamW's state for the pruned Qwen
        shutil.rmtree(Path(step.out, "ckpt"), ignore_errors=True)


# ---------------------------------------------------------------- the summary (no model is run below)
def collect(task: str, work: Path, seeds: list[int], rows: list[str], size: Size | None = None) -> dict:
    """{row: {metric: {seed: value}}} from the finished evals and runs under WORK/TASK."""
    t = work / task
    base_json = t / ("gap.json" if size is not None and size.eval_n == size.gap_n else "eval-base.json")
    runs: dict = {}

    def put(row: str, seed: int, values: dict) -> None:
        for metric, value in values.items():
            if value is not None:
                runs.setdefault(row, {}).setdefault(metric, {})[str(seed)] = value

    base = json.loads(base_json.read_text()) if base_json.is_file() else {}
    for seed in seeds:
        for label in ("teacher", "student"):
            if label in base:
                put(label, seed, {k: base[label].get(v) for k, v in METRICS.items()})
        ev = json.loads((t / f"eval-{seed}.json").read_text()) if (t / f"eval-{seed}.json").is_file() else {}
        for row in rows:
            run = t / f"{row}-{seed}"
            values = {k: ev[row].get(v) for k, v in METRICS.items()} if row in ev else {}
            if (run / "summary.json").is_file():
                values["train_seconds"] = json.loads((run / "summary.json").read_text()).get("train_time_s")
            if (run / "peak_rss.json").is_file():
                values["peak_rss_bytes"] = json.loads((run / "peak_rss.json").read_text())["peak_rss_bytes"]
            put(row, seed, values)
    return runs


def merge(old: dict, new: dict) -> dict:
    """`new`'s per-seed values over `old`'s (a rerun of some seeds or rows keeps the others)."""
    out = {row: {m: dict(v) for m, v in metrics.items()} for row, metrics in old.items()}
    for row, metrics in new.items():
        for metric, per_seed in metrics.items():
            out.setdefault(row, {}).setdefault(metric, {}).update(per_seed)
    return out


def means(runs: dict) -> dict:
    """{row: {metric: {"mean", "std", "n"}}} over the seeds each has."""
    return {row: {m: {"mean": statistics.mean(v.values()), "std": statistics.stdev(v.values()) if len(v) > 1 else 0.0,
                      "n": len(v)} for m, v in metrics.items() if v} for row, metrics in runs.items()}


def gap_recovered(runs: dict) -> dict | None:
    """The best SmolLM2 row by mean accuracy and the share of the teacher-student gap it closes."""
    acc = {row: statistics.mean(runs[row]["accuracy"].values()) for row in runs
           if runs[row].get("accuracy")}
    if "teacher" not in acc or "student" not in acc:
        return None
    trained = {row: a for row, a in acc.items() if row in SMOL_ROWS}
    if not trained:
        return None
    best = max(trained, key=trained.get)
    gap = acc["teacher"] - acc["student"]
    share = (trained[best] - acc["student"]) / gap if gap > 0 else None
    return {"best_row": best, "best_accuracy": trained[best], "teacher_accuracy": acc["teacher"],
            "student_accuracy": acc["student"], "gap": gap, "recovered": share,
            "meets_target": None if share is None else share >= 0.5}


def orderings(task: str) -> list[Ordering]:
    def acc(row: str) -> tuple:
        return ("tasks", task, "runs", row, "accuracy")

    return [Ordering(f"{task}: token-level KD (xtok kd, hybrid) >= sequence-level KD (sft) at equal data (accuracy)",
                     acc("kd_hybrid"), ">=", acc("sft")),
            Ordering(f"{task}: token-level KD (xtok kd, ULD) >= sequence-level KD (sft) at equal data (accuracy)",
                     acc("kd_uld"), ">=", acc("sft")),
            Ordering(f"{task}: on-policy (gkd, xtok hybrid) >= off-policy (kd offline, hybrid) (accuracy)",
                     acc("gkd"), ">=", acc("kd_hybrid"))]


def verdicts(results: dict, task: str) -> list[dict]:
    """The orderings whose two rows both have values for the same seeds; the others are listed as
    waiting (a row not run, or seeds missing on one side)."""
    entry = results["tasks"][task]["runs"]
    out = []
    for o in orderings(task):
        a, b = entry.get(o.a[3], {}).get("accuracy", {}), entry.get(o.b[3], {}).get("accuracy", {})
        if not a or set(a) != set(b):
            out.append({"claim": o.claim, "verdict": "waiting", "a": a, "b": b})
        else:
            out.extend(state(results, [o]))
    return out


def summarize(results: dict, task: str) -> None:
    entry = results["tasks"][task]
    entry["means"] = means(entry["runs"])
    entry["gap_recovered"] = gap_recovered(entry["runs"])
    entry["verdicts"] = verdicts(results, task)


def gap_check(path: Path) -> dict:
    ev = json.loads(path.read_text())
    gap = ev["teacher"]["accuracy"] - ev["student"]["accuracy"]
    return {"n": ev["teacher"].get("n"), "teacher": ev["teacher"]["accuracy"], "student": ev["student"]["accuracy"],
            "gap": gap, "qualifies": gap >= GAP_MIN}


def table(entry: dict) -> list[str]:
    """Markdown: one line per row, the mean over seeds of every column."""
    cols = ("accuracy", "no_answer_rate", "fidelity", "tokens_per_answer", "train_seconds", "peak_rss_bytes")
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for row, m in entry["means"].items():
        cells = [("-" if c not in m else f"{m[c]['mean'] / 2**30:.2f} GiB" if c == "peak_rss_bytes"
                  else f"{m[c]['mean']:.3f} +- {m[c]['std']:.3f}") for c in cols]
        lines.append(f"| {ROWS[row][0] if row in ROWS else row} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--size", default="full", choices=list(SIZES))
    ap.add_argument("--work", default="/tmp/retort-real-lm")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "real_lm.json"))
    ap.add_argument("--keep-going", action="store_true", help="train and evaluate a task whose gap is under 30 points")
    ap.add_argument("--drop-models", action="store_true",
                    help="remove a seed's exported models (RUN/model; LoRA rows keep RUN/adapter) once that seed's "
                         "eval is written: ~4 GB per (task, seed) less disk; a row added later then needs them again")
    ap.add_argument("--plan", action="store_true", help="print the commands; run nothing")
    ap.add_argument("--verdicts-only", action="store_true", help="recompute the summaries of --json; run nothing")
    args = ap.parse_args(argv)
    work, size = Path(args.work), SIZES[args.size]
    out = Path(args.json)
    results = json.loads(out.read_text()) if out.is_file() else {"tasks": {}}
    if args.verdicts_only:
        for task in results["tasks"]:
            summarize(results, task)
        write_json(out, results)
        return
    plans = {task: plan(task, work, size, args.seeds, args.rows) for task in args.task}
    if args.plan:
        for steps in plans.values():
            print("\n".join(s.shell() for s in steps))
        return
    work.mkdir(parents=True, exist_ok=True)
    results.update({"command": " ".join(["python", "benchmarks/real_lm.py", *(argv or sys.argv[1:])]),
                    "size": args.size, "cores": os.cpu_count(), "teacher": TEACHER, "student": STUDENT})
    for task, steps in plans.items():
        entry = results["tasks"].setdefault(task, {})
        entry.update({"task_args": TASKS[task], "size": vars(size)})
        entry.setdefault("commands", {}).update({s.name: s.shell() for s in steps})
        started = time.time()
        for step in steps:
            if not _complete(step):
                t0 = time.time()
                run_step(step, work / "log.txt")
                entry.setdefault("step_seconds", {})[step.name] = round(time.time() - t0, 1)  # wall, this machine
            if args.drop_models and step.name.startswith("eval-") and step.name != "eval-base":
                for label in [step.argv[i + 1].split("=", 1) for i, a in enumerate(step.argv) if a == "-m"]:
                    if label[0] in ROWS:  # a directory this script's run wrote
                        shutil.rmtree(label[1], ignore_errors=True)
            if step.name == "gap":
                entry["gap_check"] = gap_check(Path(step.out))
                write_json(out, results)
                # a smoke size's few problems decide nothing: it always goes on
                if not entry["gap_check"]["qualifies"] and not args.keep_going and args.size != "smoke":
                    print(f"{task}: teacher - student = {entry['gap_check']['gap']:.3f} < {GAP_MIN}: not qualified, "
                          "stopping here (--keep-going trains it anyway)", flush=True)
                    break
        entry["runs"] = merge(entry.get("runs", {}), collect(task, work, args.seeds, args.rows, size))
        entry["wall_seconds_this_run"] = round(time.time() - started, 1)
        summarize(results, task)
        write_json(out, results)
        print(f"\n{task}:\n" + "\n".join(table(entry)))
        if entry["gap_recovered"]:
            print(f"gap recovered: {entry['gap_recovered']}")
        for v in entry["verdicts"]:
            print(f"{v['claim']}: {v['verdict']}")


if __name__ == "__main__":
    main()

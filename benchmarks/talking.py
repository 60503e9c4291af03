"""Talking Models vs plain KD vs hidden-state KD, at equal steps, on a yes/no reasoning task.

The spec's small reproduction (llm.md §23.4) is a classification-style reasoning task (StrategyQA
yes/no; GLUE with BERT), expecting communication-KD > logit-KD > no KD. Here: reasoning-gym's
`isomorphic_strings` (True/False: can one string's characters be renamed into the other's; answers
only, in retort's short marker format so the tiny models fit), a teacher of the built-in teacher's
architecture (`preset:teacher`, 4 layers, width 192) trained by sft on the answers once, and the
small student (`preset:student`, 3 layers, width 64) trained from scratch per seed with each arm for
the same steps, batch and learning rate:

    sft        no KD: cross-entropy on the answers
    kd         + forward KL to the teacher (kd_weight 1, ce_weight 1)
    hidden_kd  kd + hidden-state KD at the student:teacher layer pair, through a learned projection
    talking    method=talking at the same pair (ce, kd, message alignment, round trips, interaction)

Each student is evaluated greedily on the same `--n-test` test questions (answer accuracy). Seed S
trains every student with `seed=S`; the teacher is shared (the first run trains it under --work and
later runs reuse it). A finished student run is reused when the command runs again.

    python benchmarks/talking.py --work runs/talking --seeds 0 1 2    # writes benchmarks/results/talking.json
    python benchmarks/talking.py --verdicts-only                      # recompute rows and verdicts; run nothing
    python benchmarks/talking.py --work /tmp/t --seeds 0 1 --steps 2 --teacher-steps 2 --n-test 4 \\
        --json /tmp/t/talking.json                                    # the tiny size the tests run

The JSON holds the command, the settings, the teacher's accuracy, per seed and arm the accuracy and
the training time (seconds of a shared machine: not a speed comparison), per arm the mean and std
over seeds, and the `verdicts` of ORDERINGS by benchmarks/_verdict.py, paired by seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _results import accuracy_table, write_json
from _verdict import Ordering, state
from _verdict import markdown as verdicts_markdown

ARMS = ("sft", "kd", "hidden_kd", "talking")
ORDERINGS = [
    Ordering("talking > kd (accuracy; llm.md §23.4: communication-KD > logit-KD)",
             ("rows", "talking", "accuracy"), ">", ("rows", "kd", "accuracy")),
    Ordering("talking > hidden-state kd (accuracy)", ("rows", "talking", "accuracy"), ">",
             ("rows", "hidden_kd", "accuracy")),
    Ordering("kd > sft, no KD (accuracy; logit-KD > no KD)", ("rows", "kd", "accuracy"), ">",
             ("rows", "sft", "accuracy")),
]
TASK = ["task.name=rg:isomorphic_strings", "task.answer=marker", "task.difficulty.max_string_length=6"]


def arm_overrides(arm: str, layers: str) -> list[str]:
    """The method and method_args of one arm; `layers` the STUDENT:TEACHER pair of hidden_kd and talking."""
    if arm == "sft":
        return ["method=sft"]
    if arm == "kd":
        return ["method=kd", "method_args.ce_weight=1"]
    if arm == "hidden_kd":
        return ["method=kd", "method_args.ce_weight=1", f"method_args.hidden={layers},"]
    if arm == "talking":
        return ["method=talking", f"method_args.layers={layers},"]
    raise ValueError(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")


def summarise(results: dict) -> dict:
    """`rows` (per arm: accuracy per seed, mean, std) and `verdicts` from `runs`; an ordering is
    judged only when both its arms have the same seeds, at least two."""
    rows: dict = {}
    seeds = [str(s) for s in results["seeds"] if str(s) in results["runs"]]
    for s in seeds:
        for arm, r in results["runs"][s].items():
            rows.setdefault(arm, {"accuracy": {}})["accuracy"][s] = r["accuracy"]
    for row in rows.values():
        acc = list(row["accuracy"].values())
        row["mean"] = statistics.mean(acc)
        row["std"] = statistics.stdev(acc) if len(acc) > 1 else 0.0
    results["rows"] = rows
    judged = [o for o in ORDERINGS if o.a[1] in rows and o.b[1] in rows
              and rows[o.a[1]]["accuracy"].keys() == rows[o.b[1]]["accuracy"].keys()
              and len(rows[o.a[1]]["accuracy"]) > 1]
    results["verdicts"] = state({**results, "seeds": seeds}, judged)
    return results


def markdown(results: dict) -> str:
    """The table BENCHMARKS.md prints: accuracy per seed and mean +- std per arm, then the orderings."""
    seeds = [str(s) for s in results["seeds"]]
    lines = [f"teacher accuracy: {results['teacher']['accuracy']:.3f}", "",
             *accuracy_table(results["rows"], seeds, "arm")]
    if results.get("verdicts"):
        lines += ["", verdicts_markdown(results["verdicts"])]
    return "\n".join(lines)


def _write(path: Path, results: dict) -> None:
    write_json(path, summarise(results))


def _accuracy(model_dir: Path, task_args: list[str], n_test: int) -> float:
    from retort.config import load_config
    from retort.lm.config import EvalConfig, ModelConfig, TrainRun
    from retort.lm.eval import evaluate
    from retort.lm.models import load_model
    from retort.lm.tasks import get_task

    run = load_config(TrainRun, None, task_args)
    model, tok = load_model(ModelConfig(name=str(model_dir)))
    cfg = EvalConfig(n=n_test, seed=7, max_new_tokens=12, batch_size=100)
    return evaluate(model, tok, get_task(run.task), cfg, n_samples_kept=0)["accuracy"]


def _train(out: Path, overrides: list[str]) -> float:
    """Train (or reuse a finished run in `out`); the training seconds from its summary."""
    from retort.config import load_config
    from retort.lm.config import TrainRun
    from retort.train import train

    summary = out / "summary.json"
    if not (out / "model" / "model.safetensors").is_file():
        train(load_config(TrainRun, None, [f"out={out}", *overrides]), resume=(out / "ckpt").is_dir())
    return float(json.loads(summary.read_text()).get("train_time_s", 0.0)) if summary.is_file() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", default="runs/talking", help="the teacher and one directory per seed and arm")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "talking.json"))
    ap.add_argument("--task-arg", action="append", default=None, metavar="KEY=VALUE",
                    help=f"task options for every run (repeatable; default: {' '.join(TASK)})")
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps of every student")
    ap.add_argument("--teacher-steps", type=int, default=4000, help="optimizer steps of the teacher (sft)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--student", default="preset:student")
    ap.add_argument("--layers", default="1:2", help="STUDENT:TEACHER layer pair of hidden_kd and talking")
    ap.add_argument("--n-test", type=int, default=500, help="test questions each model is evaluated on")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--verdicts-only", action="store_true",
                    help="recompute the rows and verdicts of --json from its per-seed runs; run nothing")
    args = ap.parse_args()
    out = Path(args.json)
    if args.verdicts_only:
        _write(out, json.loads(out.read_text()))
        print(markdown(json.loads(out.read_text())))
        return
    from retort.cli import _quiet_libraries

    _quiet_libraries()
    task = args.task_arg or TASK
    work = Path(args.work)
    common = [*task, "data.source=answers", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
              "train.save_every=0", "train.log_every=50", "eval.n=8", "eval.max_new_tokens=12", "eval.fidelity=false",
              "data.max_len=512"]
    teacher = work / "teacher"
    _train(teacher, [*common, "method=sft", "student.name=preset:teacher", f"train.steps={args.teacher_steps}",
                     f"data.n_train={max(1000, args.teacher_steps * args.batch_size)}", "seed=0"])
    results = {"command": " ".join(["python", "benchmarks/talking.py", *sys.argv[1:]]), "task": task,
               "student": args.student, "teacher": {"model": "preset:teacher, sft on the answers",
                                                     "steps": args.teacher_steps,
                                                     "accuracy": _accuracy(teacher / "model", task, args.n_test)},
               "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "layers": args.layers,
               "n_test": args.n_test, "seeds": args.seeds, "runs": {},
               "note": "train_time_s: wall seconds on a shared CPU machine, beside other work; not a speed comparison"}
    for s in args.seeds:
        per_arm = {}
        for arm in args.arms:
            run_dir = work / f"seed{s}" / arm
            seconds = _train(run_dir, [*common, *arm_overrides(arm, args.layers), f"student.name={args.student}",
                                       f"teacher.name={teacher / 'model'}", f"train.steps={args.steps}",
                                       f"data.n_train={max(1000, args.steps * args.batch_size)}", f"seed={s}"])
            per_arm[arm] = {"accuracy": _accuracy(run_dir / "model", task, args.n_test), "train_time_s": seconds}
        results["runs"][str(s)] = per_arm
        _write(out, results)  # after every seed: a killed run keeps what it finished
    print(markdown(json.loads(out.read_text())))


if __name__ == "__main__":
    main()

"""Does the built-in task leave distillation something to do?

Trains, in one run on this machine: the built-in teacher (`retort teacher`, SFT on worked solutions
until >= 95% test accuracy), and the small student preset from scratch on answers only and on worked
solutions (configs/student_*.yaml). Evaluates all three greedily on the same 1000 test problems
and prints wall times, parameter counts and accuracy by difficulty.

    python benchmarks/task_gap.py [--out benchmarks/results/task_gap.json] [--task modchain]
    python benchmarks/task_gap.py --task rg:chain_sum --task-arg task.difficulty.max_digits=1 \
        --task-arg task.difficulty.max_terms=5 --teacher-arg train.steps=2500 --out benchmarks/results/task_gap_rg.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "task_gap.json"))
    ap.add_argument("--task", default="modchain")
    ap.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a task option for every run, e.g. task.difficulty.max_terms=5 (repeatable)")
    ap.add_argument("--teacher-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="an option for the teacher only, e.g. train.steps=2500 (repeatable)")
    args = ap.parse_args()
    task_args = [f"task.name={args.task}", *args.task_arg]
    work = Path(tempfile.mkdtemp(prefix="retort-gap-"))
    os.environ["RETORT_CACHE"] = str(work / "cache")  # a cold cache: the teacher trains from scratch

    from rich.console import Console

    from retort.cli import _quiet_libraries
    from retort.config import load_config
    from retort.lm.config import EvalConfig, ModelConfig, TrainRun
    from retort.lm.eval import evaluate, results_table
    from retort.lm.models import load_model
    from retort.lm.tasks import get_task
    from retort.lm.teacher import ensure_teacher
    from retort.train import train

    _quiet_libraries()
    console = Console(stderr=True)
    rows, times = [], {}
    t0 = time.time()
    teacher_dir = ensure_teacher(overrides=[*task_args, *args.teacher_arg], console=console)
    times["teacher"] = time.time() - t0
    final = EvalConfig(n=1000, seed=0, max_new_tokens=96, batch_size=200)
    models = [("teacher (preset:teacher, worked solutions)", str(teacher_dir))]
    for name in ("answers_only", "solutions"):
        cfg = ROOT / "configs" / f"student_{name}.yaml"
        run = load_config(TrainRun, str(cfg), [f"out={work / name}", *task_args])
        t0 = time.time()
        train(run, console=console)
        times[name] = time.time() - t0
        models.append((f"student (preset:student, {name.replace('_', ' ')})", str(work / name / "model")))
    task = get_task(load_config(TrainRun, None, task_args).task)
    for (label, path), key in zip(models, ["teacher", "answers_only", "solutions"]):
        model, tok = load_model(ModelConfig(name=path))
        res = evaluate(model, tok, task, final)
        res["params"] = sum(p.numel() for p in model.parameters())
        res["train_wall_s"] = round(times[key], 1)
        rows.append((label, res))
    console.print(results_table(rows))
    for label, r in rows:
        print(f"{label}: params {r['params']}, train wall {r['train_wall_s']}s, accuracy {r['accuracy']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "task": args.task, "task_args": task_args,
                                          "cores": os.cpu_count(), **{l: r for l, r in rows}}, indent=2))


if __name__ == "__main__":
    main()

"""`retort teacher track=classify task.name=DATASET`: a teacher classifier trained with `ce` on a
built-in dataset and cached ($RETORT_CACHE/teacher-classify-DATASET), an ordinary run directory (a
crash resumes from its last checkpoint). `teacher.name=builtin:teacher` finds it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError
from .config import ClassifyRun
from .data import BUILTIN

# per dataset: the teacher of the small reproductions of PLD and LELP: a wide MLP on
# digits (a 64-d embedding for digits-bin, LELP's), the ccexam-shaped CNN on MNIST
TEACHERS = {
    "digits": {"student": {"name": "mlp:512-512"}, "train": {"steps": 1500}},
    "digits-3": {"student": {"name": "mlp:512-512"}, "train": {"steps": 1500}},
    "digits-bin": {"student": {"name": "mlp:256-64"}, "train": {"steps": 1500}},
    "mnist-5k": {"student": {"name": "cnn"}, "train": {"steps": 1500}},
    "mnist": {"student": {"name": "cnn"}, "train": {"steps": 3000, "eval_every": 500}},
}
BASE = {"method": "ce", "train": {"batch_size": 64, "lr": 1e-3, "warmup_steps": 0, "weight_decay": 1e-4,
                                  "eval_every": 250, "save_every": 250, "keep_checkpoints": 1, "log_every": 50}}


def teacher_config(config_file=None, overrides=None) -> ClassifyRun:
    run = load_config(ClassifyRun, config_file, overrides)
    name = run.task.name
    if name not in BUILTIN:
        raise ConfigError(f"retort teacher track=classify: task.name={name!r} is not a built-in dataset "
                          f"({', '.join(BUILTIN)}); train a teacher for your data with `retort train track=classify "
                          "method=ce` and pass its model/ directory as teacher.name")
    base = {**BASE, **TEACHERS[name], "train": {**BASE["train"], **TEACHERS[name]["train"]}}
    run = load_config(ClassifyRun, config_file, overrides, base=base)
    if run.method != "ce":
        raise ConfigError("retort teacher track=classify trains with method=ce (labels only)")
    from .models import builtin_teacher_dir

    if run.out == ClassifyRun().out:
        run = replace(run, out=str(builtin_teacher_dir(name)))
    return run


def ensure_teacher(config_file=None, overrides=None, *, force: bool = False, console=None) -> Path:
    from ..train.teacher import ensure_teacher as ensure
    from .evaluate import run_evaluator

    run = teacher_config(config_file, overrides)

    def report(summary: dict, seconds: float) -> dict:
        ev = summary["eval"]
        return {"arch": run.student.name, "dataset": run.task.name, "accuracy": ev["accuracy"], "ece": ev["ece"],
                "nll": ev["nll"], "val_accuracy": ev.get("val_accuracy"), "steps": summary["steps"],
                "train_time_s": seconds, "params": summary["params"]}

    return ensure(run, force=force, console=console, evaluate=run_evaluator(run), report=report,
                  cached=lambda i: f"{i['arch']}, test accuracy {i['accuracy']:.4f}",
                  trained=lambda i: f"{i['accuracy']:.4f} test accuracy ({i['arch']}, {i['params']:,} parameters, "
                                    f"{i['train_time_s']:.0f}s)")

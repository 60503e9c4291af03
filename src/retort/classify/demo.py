"""`retort demo --track classify`: the classifier track end to end on scikit-learn's digits, nothing
downloaded: the cached teacher (an MLP trained with `ce`), students of one small MLP trained by each
method from the same initialisation and data order, every one evaluated on the test split beside
the teacher (accuracy, accuracy at the best validation step, calibration, agreement), and the HTML
report (table, learning curves, reliability diagram). Resumable: a finished run is not trained again.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config

# label, overrides of the students (all: mlp:32 on digits, same steps, seed and data order)
DEMO_RUNS = {
    "ce": ("student: labels only (ce)", ["method=ce"]),
    "kd": ("kd (Hinton, T=4)", ["method=kd"]),
    "dkd": ("dkd (alpha=1, beta=8)", ["method=dkd"]),
    "pld": ("pld (Plackett-Luce)", ["method=pld"]),
    "lelp": ("lelp (S=2 subclasses)", ["method=lelp", "method_args.S=2"]),
}
DEFAULT_METHODS = list(DEMO_RUNS)
STUDENT = ["track=classify", "task.name=digits", "student.name=mlp:32", "teacher.name=builtin:teacher",
           "train.steps=1500", "train.eval_every=150", "train.log_every=50", "train.save_every=500"]


def run_demo(out: str = "runs/demo-classify", console=None, methods=None, seed: int = 0) -> dict:
    from ..errors import ConfigError
    from ..paths import atomic_write_text, demo_dir
    from ..report import write_report
    from ..train import train
    from .config import ClassifyRun
    from .eval import metrics, predict, reliability
    from .evaluate import results_table, run_evaluator
    from .models import load
    from .teacher import ensure_teacher
    from ..track import get_track

    methods = methods or DEFAULT_METHODS
    unknown = [m for m in methods if m not in DEMO_RUNS]
    if unknown:
        raise ConfigError(f"demo --methods: unknown {', '.join(unknown)} for --track classify; choose from "
                          f"{', '.join(DEMO_RUNS)}")
    root = demo_dir(out)
    teacher_dir = ensure_teacher(None, ["track=classify", "task.name=digits"], console=console)
    data = get_track("classify").get_task(load_config(ClassifyRun, None, ["task.name=digits"]).task)
    x, y = data.split("test")
    teacher, meta = load(str(teacher_dir))
    t_logits = predict(teacher, x)
    info = json.loads((teacher_dir.parent / "teacher.json").read_text())
    rows = {"teacher (built-in)": {**metrics(t_logits, y), "reliability": reliability(t_logits, y),
                                   "params": info["params"], "train_time_s": info["train_time_s"],
                                   "task": "digits", "split": "test"}}
    for name in methods:
        label, overrides = DEMO_RUNS[name]
        run = load_config(ClassifyRun, None, [*STUDENT, *overrides, f"out={root / name}", f"seed={seed}"])
        if not (Path(run.out) / "summary.json").is_file():
            if console is not None:
                console.print(f"demo: training {label}")
            train(run, resume=True, evaluate=run_evaluator(run), console=console)
        summary = json.loads((Path(run.out) / "summary.json").read_text())
        rows[label] = {**summary["eval"], "run_dir": name, "train_time_s": summary["train_time_s"],
                       "params": summary["params"], "task": "digits"}
    if console is not None:
        console.print(results_table(rows))
    atomic_write_text(root / "results.json", json.dumps(rows, indent=2))
    report = write_report([root], root / "report.html", title="retort demo: classifier distillation (digits)")
    if console is not None:
        console.print(f"demo: report in {report}")
    return rows

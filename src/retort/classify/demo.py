"""`retort demo --track classify`: the classifier track end to end on scikit-learn's digits, nothing
downloaded: the cached teacher (an MLP trained with `ce`), students of one small MLP trained by each
method from the same initialisation and data order, every one evaluated on the test split beside
the teacher (accuracy, accuracy at the best validation step, calibration, agreement), and the HTML
report (table, learning curves, reliability diagram). Resumable: a finished run is not trained again.
`--methods borup,recursive` adds the self-distillation methods as short `retort generations` chains.
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
    # digits marks no row private: swing is kd at T=2 with noisy soft targets here
    "swing": ("swing (T=2, noise 0.2; no private rows)", ["method=swing"]),
}
DEFAULT_METHODS = ["ce", "kd", "dkd", "pld", "lelp"]
# name -> (label, generations, overrides): the self-distillation methods as a short chain of
# `retort generations` from the built-in teacher (each generation the students' schedule; seeds
# seed+1, seed+2), shown by their last generation, its agreement and KL taken with the built-in
# teacher. Not in the default set: a chain trains one student per generation.
DEMO_CHAINS = {
    "borup": ("borup, 2 generations (alpha=0.6)", 2, ["method=borup"]),
    "recursive": ("recursive, 2 generations (a=0.3)", 2, ["method=recursive"]),
}
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
    unknown = [m for m in methods if m not in DEMO_RUNS and m not in DEMO_CHAINS]
    if unknown:
        raise ConfigError(f"demo --methods: unknown {', '.join(unknown)} for --track classify; choose from "
                          f"{', '.join([*DEMO_RUNS, *DEMO_CHAINS])}")
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
        if name in DEMO_CHAINS:
            label, row = _chain_row(name, root, seed, console)
            rows[label] = row
            continue
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


def _chain_row(name: str, root: Path, seed: int, console) -> tuple[str, dict]:
    """Run (or finish) the demo's chain `name` in ROOT/NAME; its last generation's results."""
    from .config import ClassifyRun
    from .generations import run_generations

    label, n, overrides = DEMO_CHAINS[name]
    run = load_config(ClassifyRun, None, [*STUDENT, *overrides, f"out={root / name}", f"seed={seed}"])
    if console is not None and not (root / name / f"gen-{n}" / "summary.json").is_file():
        console.print(f"demo: training {label}")
    result = run_generations(run, n, console=console)
    last = result["generations"][-1]
    summaries = [json.loads((root / name / f"gen-{k}" / "summary.json").read_text()) for k in range(1, n + 1)]
    ev = {k: v for k, v in summaries[-1]["eval"].items() if not k.startswith("teacher_")}
    return label, {**ev, "agree_top1": last["agree_base_teacher"], "kl_teacher": last["kl_base_teacher"],
                   "teacher_accuracy": result["base_teacher_accuracy"], "generations": n,
                   "run_dir": f"{name}/gen-{n}", "train_time_s": sum(s["train_time_s"] for s in summaries),
                   "params": summaries[-1]["params"], "task": "digits"}

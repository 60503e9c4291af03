"""`retort demo`: the embedded default end to end on one CPU in minutes.

Built-in teacher (trained on first use, then cached) -> students trained by each method in
`DEMO_RUNS` -> every model evaluated on the same test problems -> one table (runs/demo/results.json).
Adding a method to the demo is one line in `DEMO_RUNS`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import EvalConfig, TrainRun, load_config

STUDENT = {"student": {"name": "preset:student"},
           "data": {"n_train": 64000},
           "train": {"steps": 2000, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, "save_every": 500,
                     "log_every": 100},
           "eval": {"n": 300, "max_new_tokens": 96}}

# label -> overrides of STUDENT; the student of the small preset, trained from scratch.
DEMO_RUNS: dict[str, list[str]] = {
    "student: answers only": ["method=sft", "data.source=answers"],
    "student: sft on worked solutions": ["method=sft", "data.source=solutions"],
}

EVAL = EvalConfig(n=300, seed=7, max_new_tokens=96, batch_size=150)


def run_demo(out: str = "runs/demo", console=None) -> dict:
    from .config import ModelConfig, TaskConfig
    from .eval import evaluate, results_table
    from .models import load_model
    from .tasks import get_task
    from .teacher import ensure_teacher
    from .train import train

    root = Path(out)
    teacher_dir = ensure_teacher(console=console)
    task = get_task(TaskConfig())
    rows = []
    for label, overrides in [("teacher (built-in)", None), *DEMO_RUNS.items()]:
        path = teacher_dir
        if overrides is not None:
            slug = label.split(": ", 1)[-1].replace(" ", "_")
            run = load_config(TrainRun, None, [*overrides, f"out={root / slug}"], base=STUDENT)
            summary_file = Path(run.out) / "summary.json"
            if not summary_file.is_file():
                if console is not None:
                    console.print(f"demo: training {label}")
                train(run, resume=True, console=console)
            path = Path(run.out) / "model"
        model, tok = load_model(ModelConfig(name=str(path)))
        result = evaluate(model, tok, task, EVAL)
        result["params"] = sum(p.numel() for p in model.parameters())
        rows.append((label, result))
    if console is not None:
        console.print(results_table(rows))
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps({label: r for label, r in rows}, indent=2))
    return dict(rows)

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
           "train": {"steps": 600, "batch_size": 32, "lr": 3e-3, "warmup_steps": 30, "save_every": 0,
                     "log_every": 50},
           "eval": {"n": 300, "max_new_tokens": 96}}

# label -> overrides of STUDENT; the student of the small preset, trained from scratch.
DEMO_RUNS: dict[str, list[str]] = {
    "student: answers only": ["method=sft", "data.source=answers"],
    "student: sft on worked solutions": ["method=sft", "data.source=solutions"],
}

EVAL = EvalConfig(n=300, seed=7, max_new_tokens=96, batch_size=150)


def run_demo(out: str = "runs/demo", console=None) -> dict:
    from dataclasses import replace

    from .eval import evaluate, results_table
    from .models import load_model
    from .config import ModelConfig
    from .tasks import get_task
    from .teacher import ensure_teacher
    from .train import train

    root = Path(out)
    teacher_dir = ensure_teacher(console=console)
    rows = []
    task = None
    model, tok = load_model(ModelConfig(name=str(teacher_dir)))
    for label, overrides in [("teacher (built-in)", None), *DEMO_RUNS.items()]:
        if overrides is not None:
            slug = label.split(": ", 1)[-1].replace(" ", "_")
            run = load_config(TrainRun, None, [*overrides, f"out={root / slug}"], base=STUDENT)
            summary_file = Path(run.out) / "summary.json"
            if not summary_file.is_file():
                if console is not None:
                    console.print(f"demo: training {label}")
                train(run, resume=True, console=console)
            model, tok = load_model(replace(run.student, name=str(Path(run.out) / "model")))
        task = task or get_task(load_config(TrainRun).task)
        result = evaluate(model, tok, task, EVAL)
        result["params"] = sum(p.numel() for p in model.parameters())
        rows.append((label, result))
    if console is not None:
        console.print(results_table(rows))
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps({label: r for label, r in rows}, indent=2))
    return dict(rows)

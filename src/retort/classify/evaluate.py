"""A classify training run's evaluation: validation and test metrics at every evaluation, the test
accuracy at the step with the best *validation* accuracy (model selection never looks at test),
and agreement with the run's teacher."""

from __future__ import annotations

import json
from pathlib import Path

from .eval import metrics, predict, reliability


def best_by_validation(rows: list[dict]) -> dict:
    """Among evaluation rows (`val_accuracy`, `accuracy`, `step`), the one with the highest
    validation accuracy (the earliest on ties): its step and test accuracy."""
    rows = [r for r in rows if r.get("val_accuracy") is not None]
    if not rows:
        return {}
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["step"]))
    return {"best_val_step": best["step"], "best_val_accuracy": best["val_accuracy"],
            "test_at_best_val": best["accuracy"]}


def _history(run_dir: Path) -> list[dict]:
    rows = []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict) and "eval/accuracy" in r:
                rows.append({"step": r["step"], "accuracy": r["eval/accuracy"], "val_accuracy": r.get("eval/val_accuracy")})
    return rows


def run_evaluator(run):
    from .methods import METHODS
    from .models import check_fits, load, resolve

    cache: dict = {}
    uses_teacher = bool(METHODS[run.method].uses_teacher) and run.eval.agreement

    def evaluate(model, meta, data) -> dict:
        device = next(model.parameters()).device
        x, y = data.split("test")
        if uses_teacher and "teacher" not in cache:
            teacher, meta = load(resolve(run.teacher.name, data.name))
            check_fits(meta, data, "teacher")
            cache["teacher"] = predict(teacher.to(device), x, run.eval.batch_size, device)
            cache["teacher_metrics"] = metrics(cache["teacher"], y, bins=run.eval.ece_bins)
        logits = predict(model, x, run.eval.batch_size, device)
        out = metrics(logits, y, cache.get("teacher"), run.eval.ece_bins)
        out["reliability"] = reliability(logits, y, run.eval.ece_bins)
        if "val" in data.x:
            xv, yv = data.split("val")
            v = metrics(predict(model, xv, run.eval.batch_size, device), yv, bins=run.eval.ece_bins)
            out["val_accuracy"], out["val_nll"] = v["accuracy"], v["nll"]
        if "teacher_metrics" in cache:
            out["teacher_accuracy"] = cache["teacher_metrics"]["accuracy"]
            out["teacher_ece"] = cache["teacher_metrics"]["ece"]
        history = _history(Path(run.out))
        # the loop logs this evaluation after it returns; its step is the next evaluation step
        last, every, total = max([r["step"] for r in history] + [0]), run.train.eval_every, run.train.steps
        step = min(last + every, total) if every else total
        out.update(best_by_validation(history + [{"step": step, **out}]))
        out["split"], out["unit"] = "test", "examples"
        return out

    return evaluate


def evaluate_models(run, targets: list[tuple[str, str]], fidelity_to: str | None = None) -> list[tuple[str, dict]]:
    """`retort eval track=classify`: each (label, model name) on `run.eval.split`: accuracy, ECE,
    NLL, the reliability bins, and agreement and KL with the model labelled `fidelity_to`."""
    from ..errors import ConfigError
    from ..train.private import model_privacy
    from .data import load_dataset
    from .models import check_fits, load, resolve

    data = load_dataset(run.task)
    x, y = data.split(run.eval.split)
    logits = {}
    for label, name in targets:
        model, meta = load(resolve(name, data.name))
        check_fits(meta, data, f"model {label}")
        logits[label] = predict(model, x, run.eval.batch_size)
    if fidelity_to is not None and fidelity_to not in logits:
        raise ConfigError(f"--fidelity-to {fidelity_to}: no -m labelled so; labels: {', '.join(logits)}")
    ref = logits.get(fidelity_to) if fidelity_to else None
    rows = []
    for label, z in logits.items():
        r = metrics(z, y, ref if label != fidelity_to else None, run.eval.ece_bins)
        r.update({"reliability": reliability(z, y, run.eval.ece_bins), "task": data.name, "split": run.eval.split})
        if ref is not None and label != fidelity_to:
            r["fidelity_to"] = fidelity_to
        private = model_privacy(dict(targets)[label])  # a student trained under privacy.*: its epsilon
        if private is not None:
            r["epsilon"], r["privacy"] = private["epsilon"], private
        rows.append((label, r))
    return rows


def results_table(rows: dict, title: str = "digits, test split"):
    """A console table of classifier results; columns no row has are left out."""
    from rich.table import Table

    cols = [("model", None, None), ("accuracy", "accuracy", "{:.4f}"), ("acc @ best val", "test_at_best_val", "{:.4f}"),
            ("ECE", "ece", "{:.4f}"), ("NLL", "nll", "{:.3f}"), ("agree w/ teacher", "agree_top1", "{:.4f}"),
            ("ε (DP)", "epsilon", "{:.2f}"), ("train s", "train_time_s", "{:.0f}")]
    cols = [c for c in cols if c[1] is None or any(r.get(c[1]) is not None for r in rows.values())]
    table = Table(title=title)
    for head, _, _ in cols:
        table.add_column(head, justify="left" if head == "model" else "right")
    for label, r in rows.items():
        table.add_row(*[label if key is None else ("-" if r.get(key) is None else fmt.format(r[key]))
                        for _, key, fmt in cols])
    return table

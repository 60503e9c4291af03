"""`retort eval track=diffuse`: the teacher at its full step count and saved students at one or more
step counts, side by side on one dataset: the distribution metrics of `retort.diffuse.evaluate`,
NFE and sampling time, and a few samples per row (points, or images) that the report draws."""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError
from .data import load_data
from .evaluate import Reference, first_step, measure, sample, student_sampling
from .models import load, resolve
from .nets import ExactDenoiser
from .sampling import hybrid, karras


def _keep(x: torch.Tensor, labels) -> dict:
    """Samples small enough for a results file: 1000 points, 12 sequences (their frames), or 40
    images sorted by label."""
    if x.dim() == 2 and x.shape[1] > 2:
        return {"sequences": [[[round(float(a), 3), round(float(b), 3)] for a, b in seq.reshape(-1, 2).tolist()]
                              for seq in x[:12]]}
    if x.dim() == 2:
        return {"points": [[round(float(a), 3), round(float(b), 3)] for a, b in x[:1000].tolist()]}
    k = min(40, len(x))
    order = torch.argsort(labels[:k], stable=True) if labels is not None else torch.arange(k)
    return {"images": x[:k][order].clamp(-1, 1).squeeze(1).mul(1000).round().div(1000).tolist()}


def teacher_row(run, data, ref, first: bool = False) -> tuple[str, dict]:
    """The teacher at its full step count; `first`: with its first-step predictions (DT-visualisation)."""
    sigmas = karras(run.teacher.steps, sigma_max=data.sigma_max)
    if data.mixture is not None and run.teacher.exact:
        model, label = ExactDenoiser(data.mixture, data.n_classes, data.sigma_data), "teacher (exact)"
    else:
        model, _ = load(resolve(run.teacher.name, data.name))
        label = "teacher"
    s = sample(model, data, run.eval.n, sigmas=sigmas, sampler="heun", seed=run.eval.seed,
               batch_size=run.eval.batch_size, guidance=run.teacher.guidance)
    row = _row(s, ref, data, "teacher")
    if first:
        row["first_step"] = first_step(model, data, ref, sigma=float(sigmas[0]), seed=run.eval.seed,
                                       guidance=run.teacher.guidance)
    return f"{label}, {s['nfe']} NFE", row


def _row(s: dict, ref, data, model: str) -> dict:
    return {**measure(s["x"], s["labels"], ref), "nfe": s["nfe"], "seconds_per_1k": round(s["seconds_per_1k"], 4),
            "task": data.name, "model": model, **_keep(s["x"], s["labels"])}


def evaluate_models(run, targets: list[tuple[str, str]], say=lambda m: None,
                    hybrid_with_teacher: Optional[int] = None) -> dict:
    """label -> results. `hybrid_with_teacher=k`: also each student with the teacher's first k steps
    (diversity distillation's hybrid inference), and the teacher's and each student's first-step
    predictions (its DT-visualisation: `first_step`, on a model's first row)."""
    data = load_data(run.task.name)
    # every model and its step counts checked before any sampling
    models = []
    for name_label, name in targets:
        model, meta = load(resolve(name, data.name))
        if meta.get("dataset") not in (None, data.name):
            raise ConfigError(f"-m {name}: trained on {meta.get('dataset')}, not {data.name}")
        try:
            plan = [student_sampling(meta, k, data.sigma_max) for k in run.steps or [None]]
        except ConfigError as e:
            raise ConfigError(f"-m {name}: {e}") from None
        models.append((name_label, name, model, plan))
    ref = Reference(data, run.eval.n, run.eval.seed)
    rows = {}
    dt = bool(hybrid_with_teacher) and data.kind != "sequence"
    label, row = teacher_row(run, data, ref, first=dt)
    rows[label] = row
    say(f"eval: {label}")
    for name_label, name, model, plan in models:
        for i, (sigmas, sampler) in enumerate(plan):
            s = sample(model, data, run.eval.n, sigmas=sigmas, sampler=sampler, seed=run.eval.seed,
                       batch_size=run.eval.batch_size, frames=data.frames * run.eval.rollout if data.frames else None)
            key = f"{name_label}, {s['nfe']} NFE"
            rows[key] = {**_row(s, ref, data, name), "params": sum(p.numel() for p in model.parameters())}
            if dt and i == 0 and not hasattr(model, "rollout"):
                rows[key]["first_step"] = first_step(model, data, ref, sigma=float(sigmas[0]), seed=run.eval.seed)
            say(f"eval: {key}")
            if hybrid_with_teacher and sampler == "renoise" and len(sigmas) > hybrid_with_teacher \
                    and not hasattr(model, "rollout"):
                rows[f"{name_label} + teacher's first {hybrid_with_teacher} step(s), {len(sigmas)} NFE"] = \
                    _hybrid_row(run, data, ref, model, sigmas, hybrid_with_teacher, name)
    return rows


def _hybrid_row(run, data, ref, student, sigmas, k, name) -> dict:
    import time

    if data.mixture is not None and run.teacher.exact:
        teacher = ExactDenoiser(data.mixture, data.n_classes, data.sigma_data)
    else:
        teacher, _ = load(resolve(run.teacher.name, data.name))
    g = torch.Generator().manual_seed(run.eval.seed)
    z = torch.randn(run.eval.n, *data.shape, generator=g)
    labels = data.labels(run.eval.n, g)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = hybrid(teacher, student, z, sigmas[:k], sigmas[k:], labels, generator=g,
                   teacher_guidance=run.teacher.guidance)
    secs = (time.perf_counter() - t0) * 1000 / run.eval.n
    return {**_row({"x": x.float(), "labels": labels, "nfe": len(sigmas), "seconds_per_1k": secs}, ref, data, name),
            "hybrid_teacher_steps": k}


def results_table(rows: dict):
    from rich.table import Table

    images = any("fd" in r for r in rows.values())
    seqs = any("on_track" in r for r in rows.values())
    t = Table(title="generators: " + ("Frechet distance on classifier features" if images else
                                      "sequences: SWD (ratio to the noise floor), share on a true trajectory; "
                                      "late: the last window of a longer rollout" if seqs else
                                      "SWD (ratio to the noise floor), MMD^2, modes"))
    cols = (["model", "NFE", "FD", "FD floor", "label entropy", "label match", "within-class div.", "s / 1k"] if images
            else ["model", "NFE", "SWD ratio", "frame SWD ratio", "on track", "coherent", "trajectories", "frames",
                  "late frame SWD ratio", "late coherent", "s / 1k"] if seqs
            else ["model", "NFE", "SWD ratio", "MMD^2", "modes", "recall", "precision", "s / 1k"])
    dt = any("first_step" in r for r in rows.values()) and not seqs
    if dt:  # DT-visualisation: how far apart, and how far from real samples, the first step's predictions are
        cols = cols[:-1] + ["step-1 spread", "step-1 to data", cols[-1]]
    for c in cols:
        t.add_column(c, justify="left" if c == "model" else "right")
    for label, r in rows.items():
        def f(k, d=3):
            v = r.get(k)
            return "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))

        if images:
            vals = [f("nfe"), f("fd", 2), f("fd_floor", 2), f("label_entropy"), f("label_match"),
                    f("within_class_diversity", 2)]
        elif seqs:
            traj = f"{r['trajectories_covered']}/{r['trajectories']}" if "trajectories" in r else "-"
            vals = [f("nfe"), f("swd_ratio", 2), f("frame_swd_ratio", 2), f("on_track"), f("coherent"), traj,
                    f("rollout_frames"), f("late_frame_swd_ratio", 2), f("late_coherent")]
        else:
            modes = f"{r['modes_covered']}/{r['modes']}" if "modes" in r else "-"
            vals = [f("nfe"), f("swd_ratio", 2), f("mmd2", 5), modes, f("recall", 2), f("precision", 3)]
        if dt:
            fs = r.get("first_step") or {}
            vals += [f"{fs[k]:.3f}" if k in fs else "-" for k in ("spread", "to_data")]
        t.add_row(label, *vals, f("seconds_per_1k", 3))
    return t

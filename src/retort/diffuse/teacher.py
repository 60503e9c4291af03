"""`retort teacher track=diffuse task.name=DATASET`: the teacher network of a built-in dataset,
trained with `method=denoise` and cached ($RETORT_CACHE/teacher-diffuse-DATASET), an ordinary run
directory (a crash resumes from its last checkpoint). `teacher.name=builtin:teacher` finds it.

On a mixture the teacher is exact; the network cached here is its copy (regressed onto the closed
form), which initialises the student and the fake score as a pretrained teacher's weights would. On
digits and MNIST it is the teacher: a class-conditional U-Net trained by EDM's denoising loss with
labels dropped 10% of the time (so it also denoises unconditionally, for guidance)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError
from .config import DiffuseRun
from .data import BUILTIN, POINTS, SEQUENCES

_POINTS = {"student": {"name": "mlp:128-3"}, "method_args": {"target": "exact", "uniform": 0.5, "label_dropout": 0.1},
           "train": {"steps": 3000, "batch_size": 512, "lr": 2e-3, "schedule": "warmup_cosine", "warmup_steps": 100}}
TEACHERS = {
    **{name: _POINTS for name in POINTS},
    **{name: {**_POINTS, "student": {"name": "mlp:256-3"}} for name in SEQUENCES},
    "digits": {"student": {"name": "unet:32-64"}, "method_args": {"label_dropout": 0.1},
               "train": {"steps": 1500, "batch_size": 128, "lr": 2e-3, "schedule": "warmup_cosine", "warmup_steps": 200}},
    "mnist": {"student": {"name": "unet:32-64-64"}, "method_args": {"label_dropout": 0.1},
              "train": {"steps": 20000, "batch_size": 128, "lr": 1e-3, "schedule": "warmup_cosine", "warmup_steps": 500}},
}
BASE = {"method": "denoise", "train": {"weight_decay": 0.0, "beta2": 0.999, "clip_grad": 1.0, "eval_every": 0,
                                       "save_every": 500, "keep_checkpoints": 1, "log_every": 100},
        "eval": {"n": 2000, "collapse": "off"}}


def teacher_config(config_file=None, overrides=None) -> DiffuseRun:
    run = load_config(DiffuseRun, config_file, overrides)
    name = run.task.name
    if name not in BUILTIN:
        raise ConfigError(f"retort teacher track=diffuse: task.name={name!r} is not a built-in dataset "
                          f"({', '.join(BUILTIN)})")
    spec = TEACHERS[name]
    base = {**BASE, "student": spec["student"], "method_args": spec["method_args"],
            "train": {**BASE["train"], **spec["train"]}, "eval": BASE["eval"]}
    run = load_config(DiffuseRun, config_file, overrides, base=base)
    if run.method != "denoise":
        raise ConfigError("retort teacher track=diffuse trains with method=denoise")
    from .models import builtin_teacher_dir

    if run.out == DiffuseRun().out:
        run = replace(run, out=str(builtin_teacher_dir(name)))
    return run


def ensure_teacher(config_file=None, overrides=None, *, force: bool = False, console=None) -> Path:
    from ..track import get_track
    from ..train.teacher import ensure_teacher as ensure
    from .evaluate import Reference, measure, sample
    from .models import load

    run = teacher_config(config_file, overrides)
    out = Path(run.out)

    def report(summary: dict, seconds: float) -> dict:
        model, meta = load(str(out / "model"))
        data = get_track(run.track).get_task(run.task)
        ref = Reference(data, run.eval.n, run.eval.seed)
        s = sample(model, data, run.eval.n, sigmas=meta["sampling"]["sigmas"], sampler="heun", seed=run.eval.seed)
        m = measure(s["x"], s["labels"], ref)
        if data.kind == "sequence":
            text = (f"SWD {m['swd_ratio']:.2f}x the floor, {m['on_track']:.1%} of sequences on a true trajectory, "
                    f"{m['trajectories_covered']}/{m['trajectories']} trajectories at {s['nfe']} NFE")
        elif data.kind == "points":
            text = f"SWD {m['swd_ratio']:.2f}x the floor, {m['modes_covered']}/{m['modes']} modes at {s['nfe']} NFE"
        else:
            text = f"FD {m['fd']:.2f} (real-vs-real floor {m['fd_floor']:.2f}) at {s['nfe']} NFE"
        return {"arch": run.student.name, "dataset": run.task.name, "steps": summary["steps"],
                "params": summary["params"], "train_time_s": seconds, "nfe": s["nfe"], "metrics": m, "summary": text}

    return ensure(run, force=force, console=console, report=report,
                  cached=lambda i: f"{i['arch']}, {i['summary']}",
                  trained=lambda i: f"{i['summary']} ({i['arch']}, {i['params']:,} parameters, "
                                    f"{i['train_time_s']:.0f}s)")

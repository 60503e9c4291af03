"""`retort demo --track diffuse`: few-step distillation end to end, nothing downloaded: on the 8-mode
ring (the exact teacher; its network copy trained and cached first), one-step students by `dmd2`
and `dmd` and a two-step `cd` student; on scikit-learn's digits, the cached U-Net teacher (`retort
teacher track=diffuse task.name=digits`, trained here if absent) and a one-step `dmd2` student; then
every model side by side (the teacher at its full step count, each student at its own) and the HTML
report (tables, sample scatters and image grids, training curves). Resumable: a finished run is not
trained again. About 5 minutes on 2 cores from nothing cached.

`--methods` also takes every other method of the track, each at the ring rows' budget (3000 steps):
`denoise` (a many-step model trained from scratch on ring samples), `gdd` (as GDD-I, hidden weights
frozen) and `uni_instruct` (its own discriminator), the variants measured stable on MLP students;
`phased_dmd` (two phases, four steps), `msd` (two students on the class-conditional `classes`
mixture) and `onpolicy_dmd` (a four-step block-causal student of the `ring-seq` toy video: ODE
initialisation, then DMD on its own rollouts; at this size its causal student stays far from the
teacher, as in BENCHMARKS.md: the row shows the method running, not a good student). Each dataset's
teacher is trained and cached when a row needs it."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config

# label -> (dataset, overrides); every student: the run's seed
POINTS = ["train.steps=3000", "train.eval_every=1000", "train.save_every=1000", "eval.n=2000"]
RING = ["task.name=ring", *POINTS]
FAKE_LR = "method_args.fake_lr=4e-4"  # the critic at 4x the generator's lr, as benchmarks/diffuse.py
DEMO_RUNS = {
    "dmd2": ("ring", ["method=dmd2", FAKE_LR, *RING]),
    "dmd": ("ring", ["method=dmd", FAKE_LR, *RING]),
    "cd": ("ring", ["method=cd", "student.steps=2", *RING]),
    "dmd2-digits": ("digits", ["method=dmd2", "task.name=digits", "train.steps=800", "train.batch_size=64",
                               "train.lr=2e-4", "method_args.fake_lr=2e-4", "train.eval_every=400",
                               "train.save_every=400", "eval.n=1000"]),
}
DEFAULT_METHODS = list(DEMO_RUNS)
# the rest of the track's methods, by name (`--methods`): the ring rows' budget
DEMO_RUNS.update({
    "denoise": ("ring", ["method=denoise", "student.name=mlp:128-3", "train.batch_size=512", "train.lr=2e-3",
                         "train.schedule=warmup_cosine", "train.warmup_steps=100", *RING]),
    # GDD-I: with all of an MLP's weights free GDD collapsed in 2 of 3 seeds (BENCHMARKS.md), frozen it did not
    "gdd": ("ring", ["method=gdd", "method_args.freeze=true", *RING]),
    "uni_instruct": ("ring", ["method=uni_instruct", FAKE_LR, "method_args.disc=separate", *RING]),
    "phased_dmd": ("ring", ["method=phased_dmd", FAKE_LR, "student.steps=4", *RING]),
    "msd": ("classes", ["method=msd", FAKE_LR, "method_args.students=2", "task.name=classes", *POINTS]),
    "onpolicy_dmd": ("ring-seq", ["method=onpolicy_dmd", FAKE_LR, "task.name=ring-seq", "student.steps=4",
                                  "train.lr=5e-4", "method_args.ode_steps=1500", *POINTS]),
})


def run_demo(out: str = "runs/demo-diffuse", console=None, methods=None, seed: int = 0) -> dict:
    from ..errors import ConfigError
    from ..paths import atomic_write_text, demo_dir
    from ..report import write_report
    from ..train import train
    from .compare import evaluate_models, results_table
    from .config import DiffuseEvalRun, DiffuseRun
    from .evaluate import run_evaluator
    from .teacher import ensure_teacher

    say = console.print if console is not None else (lambda m: None)
    methods = methods or DEFAULT_METHODS
    unknown = [m for m in methods if m not in DEMO_RUNS]
    if unknown:
        raise ConfigError(f"demo --methods: unknown {', '.join(unknown)} for --track diffuse; choose from "
                          f"{', '.join(DEMO_RUNS)}")
    root = demo_dir(out)
    runs = {name: DEMO_RUNS[name][0] for name in methods}
    datasets = list(dict.fromkeys(runs.values()))  # in the order of their first row
    teachers = {d: ensure_teacher(None, ["track=diffuse", f"task.name={d}"], console=console) for d in datasets}
    rows: dict = {}
    eval_n = {}
    for name in methods:
        dataset, overrides = DEMO_RUNS[name]
        run = load_config(DiffuseRun, None, ["track=diffuse", *overrides, f"teacher.name={teachers[dataset]}",
                                             f"out={root / name}", f"seed={seed}"])
        eval_n.setdefault(dataset, run.eval.n)  # the side-by-side evaluation at the rows' own size
        if not (Path(run.out) / "summary.json").is_file():
            say(f"demo: training {name} on {dataset}")
            train(run, resume=True, evaluate=run_evaluator(run), console=console)
    for dataset in datasets:
        names = [m for m in methods if runs[m] == dataset]
        ev = load_config(DiffuseEvalRun, None, [f"task.name={dataset}", f"teacher.name={teachers[dataset]}",
                                                f"eval.n={eval_n[dataset]}"])
        got = evaluate_models(ev, [(m, str(root / m / "model")) for m in names], say=say)
        for label, row in got.items():
            run_dir = next((m for m in names if label.startswith(f"{m},")), None)
            if run_dir is not None:
                summary = json.loads((root / run_dir / "summary.json").read_text())
                row.update(run_dir=run_dir, train_time_s=summary["train_time_s"])
            rows[f"{label} ({dataset})" if not label.endswith(f"({dataset})") else label] = row
        if console is not None:
            console.print(results_table(got))
    atomic_write_text(root / "results.json", json.dumps(rows))
    report = write_report([root], root / "report.html", title="retort demo: few-step diffusion distillation")
    say(f"demo: report in {report}")
    return rows

"""`retort demo`: the embedded default end to end on one CPU in minutes.

Built-in teacher (trained on first use, then cached) -> teacher traces -> students trained by each
entry of `DEMO_RUNS` -> every model evaluated on the same test problems -> a table in the terminal,
`results.json` and `report.html` in the demo directory. Adding a method to the demo is one line in
`DEMO_RUNS`. Finished pieces are reused when the demo is run again.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import EvalConfig, TracesRun, TrainRun, load_config

STUDENT = {"student": {"name": "preset:student"},
           "data": {"n_train": 64000},
           "train": {"steps": 2000, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, "save_every": 500,
                     "log_every": 100}}

# Teacher traces the distilled students learn from: 4000 train prompts, one sample each at
# temperature 1, with the teacher's top-8 log-probs (for offline KD).
TRACES = ["n_prompts=4000", "sampling.n=1", "sampling.temperature=1.0", "sampling.max_new_tokens=96",
          "sampling.topk=8", "shard_prompts=500", "batch_size=500"]

# name -> (label, overrides of STUDENT); "{traces}" is the demo's trace directory, "{warm}" the model
# of the shared warm start (below). Adding a method to the demo is one line here.
# Off-policy rows: the small student preset trained from scratch for 2000 steps.
# On-policy rows (and "sft_more", their off-policy control): the warm start trained 300 steps more
# (9600 student sequences each, the same for every row), with 48-token rollouts.
ON_POLICY = ["student.name={warm}", "train.steps=300", "train.warmup_steps=10", "train.lr=1e-3",
             "train.save_every=100", "train.log_every=25", "data.n_train=9600"]
TRACE_DATA = ["data.source=traces", "data.traces={traces}"]


def _on_policy(method: str, data=TRACE_DATA) -> list[str]:
    return [f"method={method}", *data, *ON_POLICY, "method_args.max_new_tokens=48"]


DEMO_RUNS: dict[str, tuple[str, list[str]]] = {
    "answers": ("student: answers only", ["method=sft", "data.source=answers", "train.steps=600"]),
    "sft": ("student: sft on teacher traces", ["method=sft", *TRACE_DATA]),
    "kd": ("student: kd, forward KL on teacher top-8", ["method=kd", *TRACE_DATA, "method_args.teacher=offline"]),
    "sft_more": ("warm start + 300 sft steps", ["method=sft", *TRACE_DATA, *ON_POLICY]),
    "gkd": ("warm start + 300 gkd steps (on-policy JSD)", _on_policy("gkd")),
    "rkl_pg": ("warm start + 300 rkl_pg steps", _on_policy("rkl_pg")),
    "tsd_kd": ("warm start + 300 tsd_kd steps", _on_policy("tsd_kd")),
    "opsd": ("warm start + 300 opsd steps (self-distillation)", _on_policy("opsd", ["data.source=solutions"])),
}
DEFAULT_METHODS = ("answers", "sft")
# The warm start of the on-policy rows: sft on the teacher traces (the sft row's 2000-step
# schedule), stopped once it answers half of 200 *train* problems (checked every 50 steps), so that
# the methods after it start mid-way: past the point where the student gets any arithmetic right
# (after 300 or even 1000 steps it still scores ~0.11-0.14, about what one fixed digit scores, and
# 300 more steps of any method leave it there), with room left to differ. Shown as its own row.
WARM = ("warm start: sft on teacher traces to 50% train accuracy",
        ["method=sft", *TRACE_DATA, "train.stop_at_accuracy=0.5",
         "train.eval_every=50", "eval.split=train", "eval.n=200", "eval.max_new_tokens=96"])

EVAL = EvalConfig(n=500, seed=7, max_new_tokens=96, batch_size=250)


def run_demo(out: str = "runs/demo", console=None, methods=DEFAULT_METHODS, seed: int = 0) -> dict:
    from .config import ModelConfig, TaskConfig
    from .data.traces import read_manifest
    from .errors import DataError
    from .eval import evaluate, results_table
    from .models import load_model
    from .report import write_report
    from .tasks import get_task
    from .teacher import ensure_teacher
    from .traces import run_traces
    from .train import train

    unknown = [m for m in methods if m not in DEMO_RUNS]
    if unknown:
        raise DataError(f"demo --methods: unknown {', '.join(unknown)}; choose from {', '.join(DEMO_RUNS)}")
    root = Path(out)
    teacher_dir = ensure_teacher(console=console)
    traces = root / "traces"
    try:
        done = read_manifest(traces).get("complete", False)
    except DataError:
        done = False
    if not done:
        if console is not None:
            console.print("demo: sampling teacher traces")
        run_traces(load_config(TracesRun, None, [*TRACES, f"out={traces}", f"teacher.name={teacher_dir}"]),
                   console=console)
    task = get_task(TaskConfig())
    rows = []
    todo = [(m, DEMO_RUNS[m]) for m in methods]
    if any("student.name={warm}" in o for _, (_, ov) in todo for o in ov):
        todo.insert(0, ("warm", WARM))
    for name, (label, overrides) in [("teacher", ("teacher (built-in)", None)), *todo]:
        path = teacher_dir
        if overrides is not None:
            slug = name
            args = [o.replace("{traces}", str(traces)).replace("{warm}", str(root / "warm" / "model"))
                    for o in overrides]
            run = load_config(TrainRun, None, [*args, f"out={root / slug}", f"seed={seed}"], base=STUDENT)
            if not (Path(run.out) / "summary.json").is_file():
                if console is not None:
                    console.print(f"demo: training {label}")
                stops = run.train.stop_at_accuracy > 0  # needs the periodic evaluation
                train(run, resume=True, console=console,
                      evaluate=(lambda m, t, task_, cfg=run.eval: evaluate(m, t, task_, cfg)) if stops else None)
            path = Path(run.out) / "model"
        model, tok = load_model(ModelConfig(name=str(path)))
        result = evaluate(model, tok, task, EVAL)
        result["params"] = sum(p.numel() for p in model.parameters())
        if overrides is not None:
            result["run_dir"] = name
            result["train_time_s"] = json.loads((Path(run.out) / "summary.json").read_text()).get("train_time_s")
        rows.append((label, result))
    if console is not None:
        console.print(results_table(rows))
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps({label: r for label, r in rows}, indent=2))
    report = write_report([root], root / "report.html", title="retort demo")
    if console is not None:
        console.print(f"demo: report in {report}")
    return dict(rows)

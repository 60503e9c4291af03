"""`retort demo`: the embedded default end to end on one CPU in minutes.

Built-in teacher (trained on first use, then cached) -> teacher traces -> students trained by each
entry of `DEMO_RUNS` -> every model evaluated on the same test problems -> a table in the terminal,
`results.json` and `report.html` in the demo directory. Adding a method to the demo is one line in
`DEMO_RUNS`. Finished pieces are reused when the demo is run again.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config

from .config import EvalConfig, TracesRun, TrainRun

STUDENT = {"student": {"name": "preset:student"},
           "data": {"n_train": 64000},
           "train": {"steps": 2000, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, "save_every": 500,
                     "log_every": 100}}

# Teacher trace sets (4000 train prompts each), sampled when a row needs them. "traces": one sample
# per prompt at temperature 1 with the teacher's top-8 log-probs (for offline KD); "traces_low":
# one at temperature 0.6 (DASD's low-temperature set); "traces_x4": four at temperature 1 (the
# candidates of DASD's selection and its random control, and the positive/negative pairs).
_TRACES_COMMON = ["n_prompts=4000", "sampling.max_new_tokens=96", "shard_prompts=500", "batch_size=500"]
TRACE_SETS: dict[str, list[str]] = {
    "traces": [*_TRACES_COMMON, "sampling.n=1", "sampling.temperature=1.0", "sampling.topk=8"],
    "traces_low": [*_TRACES_COMMON, "sampling.n=1", "sampling.temperature=0.6"],
    "traces_x4": [*_TRACES_COMMON, "sampling.n=4", "sampling.temperature=1.0"],
}
TRACES = TRACE_SETS["traces"]
# Curated sets: name -> (trace set, `retort curate` arguments); "{warm}" is the warm start's model.
CURATED: dict[str, tuple[str, dict]] = {
    "pairs": ("traces_x4", {"pairs": 1}),                                         # redi / dpo / simpo
    "random1": ("traces_x4", {"correct_only": True, "first_k_correct": 1}),       # 1 of 4, at random
    "das": ("traces_x4", {"correct_only": True, "das_student": "{warm}", "das_keep": 1}),  # 1 of 4, DAS
    # on this task a sentence's mean log-prob rarely differs by 1 nat (1.4% of sentences; 15% at 0.25)
    "das_d025": ("traces_x4", {"correct_only": True, "das_student": "{warm}", "das_keep": 1, "das_delta": 0.25}),
    "mixed": ("traces", {"mixed_student": "{warm}", "mixed_from": "failed", "with_source": True}),
}

# name -> (label, overrides of STUDENT). In overrides, "{NAME}" is the demo's trace or curated set
# NAME, "{warm}" the model of the shared warm start (below) and "{model:RUN}" the model of demo
# run RUN (trained first). Adding a method to the demo is one line here.
# Off-policy rows: the small student preset trained from scratch for 2000 steps.
# Warm-start rows (on-policy methods, "sft_more" their off-policy control, and the trace-learning
# methods): the warm start trained 300 steps more (9600 student sequences each, the same for every
# row), with 48-token rollouts for the on-policy ones.
ON_POLICY = ["student.name={warm}", "train.steps=300", "train.warmup_steps=10", "train.lr=1e-3",
             "train.save_every=100", "train.log_every=25", "data.n_train=9600"]
TRACE_DATA = ["data.source=traces", "data.traces={traces}"]


def _on_policy(method: str, data=TRACE_DATA) -> list[str]:
    return [f"method={method}", *data, *ON_POLICY, "method_args.max_new_tokens=48"]


def _more(method: str, traces: str = "traces", *extra: str) -> list[str]:
    """300 more steps of an off-policy method from the warm start, on a trace or curated set."""
    return [f"method={method}", "data.source=traces", f"data.traces={{{traces}}}", *ON_POLICY, *extra]


# Pair methods: 16 pairs per step, i.e. 32 student sequences, the budget of every other row; lr
# 1e-4, since at the sft rows' 1e-3 all three collapsed below the warm start (BENCHMARKS.md).
PAIRS = ["train.batch_size=16", "data.n_train=4800", "train.lr=1e-4"]


# DASD's temperature schedule: 150 steps on the low-temperature traces, then 150 on high (random 1 of 4).
HALF = ["train.steps=150", "data.n_train=4800"]

DEMO_RUNS: dict[str, tuple[str, list[str]]] = {
    "answers": ("student: answers only", ["method=sft", "data.source=answers", "train.steps=600"]),
    "sft": ("student: sft on teacher traces", ["method=sft", *TRACE_DATA]),
    "kd": ("student: kd, forward KL on teacher top-8", ["method=kd", *TRACE_DATA, "method_args.teacher=offline"]),
    "sft_more": ("warm start + 300 sft steps", ["method=sft", *TRACE_DATA, *ON_POLICY]),
    "gkd": ("warm start + 300 gkd steps (on-policy JSD)", _on_policy("gkd")),
    "rkl_pg": ("warm start + 300 rkl_pg steps", _on_policy("rkl_pg")),
    "tsd_kd": ("warm start + 300 tsd_kd steps", _on_policy("tsd_kd")),
    "opsd": ("warm start + 300 opsd steps (self-distillation)", _on_policy("opsd", ["data.source=solutions"])),
    "redi": ("warm start + 300 redi steps (16 pairs/step)", _more("redi", "pairs", *PAIRS)),
    "redi_a0": ("warm start + 300 redi alpha=0 steps (= sft on the positives)",
                _more("redi", "pairs", *PAIRS, "method_args.alpha=0.0")),
    "dpo": ("warm start + 300 dpo steps (16 pairs/step)", _more("dpo", "pairs", *PAIRS)),
    "simpo": ("warm start + 300 simpo steps (16 pairs/step)", _more("simpo", "pairs", *PAIRS)),
    "curio_sft": ("warm start + 300 curio_sft steps", _more("curio_sft")),
    "chunk_sft": ("warm start + 300 chunk_sft steps", _more("chunk_sft")),
    "dasd_low": ("warm start + 300 sft steps, T=0.6 traces", _more("sft", "traces_low")),
    "dasd_high": ("warm start + 300 sft steps, T=1 traces (random 1 of 4)", _more("sft", "random1")),
    "dasd_low_half": ("warm start + 150 sft steps, T=0.6 traces", [*_more("sft", "traces_low"), *HALF]),
    "dasd_sched": ("... + 150 sft steps, T=1 traces (DASD schedule)",
                   [*_more("sft", "random1"), *HALF, "student.name={model:dasd_low_half}"]),
    "dasd_das": ("warm start + 300 sft steps, T=1 traces (DAS 1 of 4)", _more("sft", "das")),
    "dasd_das_d025": ("warm start + 300 sft steps, T=1 traces (DAS 1 of 4, delta 0.25)", _more("sft", "das_d025")),
    "dasd_mixed": ("warm start + 300 sft steps, T=1 traces + mixed-policy", _more("sft", "mixed")),
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

# Greedy accuracy and tokens on 500 test problems, plus pass@4 / maj@4 at temperature 1, and the
# student's mean next-token entropy over its own greedy answers.
EVAL = EvalConfig(n=500, seed=7, max_new_tokens=96, batch_size=250, k=4)


def _made_with(manifest: dict, student_dir: Path) -> bool:
    """Whether a curated set (DAS or mixed-policy) was scored / sampled by this student's weights."""
    from .config import ModelConfig
    from .models import load_model
    from .data.hashes import weights_sha256

    params = manifest.get("params", {})
    recorded = (params.get("filters", {}).get("das") or params.get("mixed_policy") or {}).get("student_weights_sha256")
    return recorded == weights_sha256(load_model(ModelConfig(name=str(student_dir)))[0])


def _check_same_run(run) -> None:
    """A finished row is reused only if it was trained with this row's configuration."""
    from ..config import saved_config_diff
    from ..errors import ConfigError

    saved = Path(run.out) / "config.yaml"
    diff = saved_config_diff(saved, run) if saved.is_file() else []
    if diff:
        raise ConfigError(f"demo: {run.out} holds a run trained with other settings (differ at {', '.join(diff)}); "
                          "delete it or use another --out")


def _weights_key(model_dir: Path) -> list:
    return [[w.name, w.stat().st_size, w.stat().st_mtime_ns] for w in sorted(Path(model_dir).glob("*.safetensors"))]


def _reference(teacher_dir: Path, task):
    """The teacher as every student's fidelity reference: its cache key, and a loader of (label,
    model, tokenizer, its greedy answers on EVAL's prompts) run once, on first use."""
    from .config import ModelConfig
    from .eval import load_reference

    loaded: dict = {}

    def get():
        if not loaded:
            loaded["ref"] = load_reference(ModelConfig(name=str(teacher_dir)), task, EVAL, "teacher")
        return loaded["ref"]
    return {"key": _weights_key(teacher_dir), "get": get}


def _evaluated(model_dir: Path, cache: Path, task, reference=None) -> dict:
    """EVAL of the model in `model_dir` (with fidelity to `reference`, the teacher, when given),
    reused from `cache` while the weights, EVAL and the reference are unchanged."""
    from dataclasses import asdict

    from .config import ModelConfig
    from .eval import evaluate
    from .models import load_model

    key = {"eval": asdict(EVAL), "entropy": True, "weights": _weights_key(model_dir),
           "fidelity_to": None if reference is None else reference["key"]}
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["result"]
    model, tok = load_model(ModelConfig(name=str(model_dir)))
    result = evaluate(model, tok, task, EVAL, entropy=True,
                      reference=None if reference is None else reference["get"]())
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "result": result}))
    return result




def _older_demo(cache: Path) -> bool:
    """A demo directory from before `demo.json`: it holds the demo's teacher evaluation cache."""
    try:
        saved = json.loads(cache.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and set(saved) == {"key", "result"}


def _demo_dir(out: str) -> Path:
    """The demo's directory: new, empty, or one a demo made (`demo.json`, or an older demo's
    results/traces); see `retort.paths.demo_dir`."""
    from ..paths import demo_dir

    return demo_dir(out, also_ours=_older_demo(Path(out) / "teacher_eval.json"))


def _placeholders(overrides: list[str]) -> set[str]:
    import re

    return {m for o in overrides for m in re.findall(r"\{([a-z_0-9:]+)\}", o)}


def _plan(methods) -> list[str]:
    """Runs to train, dependencies first: the warm start and any {model:RUN} a row builds on."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        overrides = WARM[1] if name == "warm" else DEMO_RUNS[name][1]
        for ph in sorted(_placeholders(overrides)):
            if ph == "warm" or ph in CURATED and "{warm}" in str(CURATED[ph][1]):
                visit("warm")
            elif ph.startswith("model:"):
                visit(ph.split(":", 1)[1])
        order.append(name)

    for m in methods:
        visit(m)
    return order


def run_demo(out: str = "runs/demo", console=None, methods=DEFAULT_METHODS, seed: int = 0) -> dict:
    from .config import TaskConfig
    from .data.traces import read_manifest
    from ..errors import DataError
    from .eval import evaluate, results_table
    from ..report import write_report
    from .tasks import get_task
    from .teacher import ensure_teacher
    from .traces import run_traces
    from ..train import train

    unknown = [m for m in methods if m not in DEMO_RUNS]
    if unknown:
        raise DataError(f"demo --methods: unknown {', '.join(unknown)}; choose from {', '.join(DEMO_RUNS)}")
    root = _demo_dir(out)
    teacher_dir = ensure_teacher(console=console)

    def trace_set(name: str) -> Path:
        path = root / name
        try:
            done = read_manifest(path).get("complete", False)
        except DataError:
            done = False
        if not done:
            if console is not None:
                console.print(f"demo: sampling teacher traces ({name})")
            run_traces(load_config(TracesRun, None, [*TRACE_SETS[name], f"out={path}", f"teacher.name={teacher_dir}"]),
                       console=console)
        return path

    def curated(name: str) -> Path:
        from .curate import filter_traces
        from .curate.mixed import mixed_policy

        path, (source, kwargs) = root / name, CURATED[name]
        if (path / "manifest.json").is_file() and read_manifest(path).get("complete"):
            if "{warm}" not in kwargs.values() or _made_with(read_manifest(path), root / "warm" / "model"):
                return path
            from .data.traces import remove_trace_set

            remove_trace_set(path)  # made with an earlier warm start: make it again
        src = trace_set(source)
        kwargs = {k: str(root / "warm" / "model") if v == "{warm}" else v for k, v in kwargs.items()}
        if console is not None:
            console.print(f"demo: curating {name} from {source}")
        if "mixed_student" in kwargs:
            student = kwargs.pop("mixed_student")
            mixed_policy(str(src), str(path), student, source=kwargs.pop("mixed_from"), seed=seed,
                         batch_size=500, overwrite=True, console=console, **kwargs)
        else:
            filter_traces(str(src), str(path), batch_size=500, overwrite=True, console=console, **kwargs)
        return path

    def resolve(o: str) -> str:
        for ph in _placeholders([o]):
            if ph == "warm" or ph.startswith("model:"):
                where = root / ("warm" if ph == "warm" else ph.split(":", 1)[1]) / "model"
            else:
                where = trace_set(ph) if ph in TRACE_SETS else curated(ph)
            o = o.replace("{" + ph + "}", str(where))
        return o

    trace_set("traces")
    task = get_task(TaskConfig())
    rows = []
    todo = [(name, WARM if name == "warm" else DEMO_RUNS[name]) for name in _plan(methods)]
    reference = _reference(teacher_dir, task)  # every student's fidelity to the teacher, beside accuracy
    for name, (label, overrides) in [("teacher", ("teacher (built-in)", None)), *todo]:
        path = teacher_dir
        if overrides is not None:
            args = [resolve(o) for o in overrides]
            run = load_config(TrainRun, None, [*args, f"out={root / name}", f"seed={seed}"], base=STUDENT)
            _check_same_run(run)
            if not (Path(run.out) / "summary.json").is_file():
                if console is not None:
                    console.print(f"demo: training {label}")
                stops = run.train.stop_at_accuracy > 0  # needs the periodic evaluation
                train(run, resume=True, console=console,
                      evaluate=(lambda m, t, task_, cfg=run.eval: evaluate(m, t, task_, cfg)) if stops else None)
            path = Path(run.out) / "model"
        result = _evaluated(path, root / ("teacher_eval.json" if overrides is None else f"{name}/eval.json"), task,
                            reference=None if overrides is None else reference)
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

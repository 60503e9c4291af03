"""`retort eval` for language models: each model's pass@1 / pass@k / maj@k / tokens on the task,
optionally its fidelity to a reference model and the provenance of its answer sentences."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..progress import ProgressLines


def evaluate_models(run, targets: list, options: dict, console) -> dict:
    from ..errors import ConfigError
    from ..train.private import model_privacy
    from .eval import evaluate, results_table
    from .models import check_vocab, load_model
    from .tasks import get_task, require_examples

    fidelity_to, provenance = options.get("fidelity_to"), options.get("provenance")
    task = get_task(run.task)
    if run.program == "python" or getattr(task, "program", None) == "python":
        from .tasks.programs import as_program

        task = as_program(task, run.programs)
    if run.agent.kind == "code" or getattr(task, "agent", None) is not None:
        if run.program == "python":
            raise ConfigError("agent=code and program=python: one way of answering at a time")
        task.agent = replace(run.agent, kind="code")  # calc is answered as an agent whatever agent.kind says
    n = require_examples(task, run.eval.split, run.eval.n, "eval", run.eval.seed)
    lorid = options.get("lorid")
    defaults = {"lorid_rounds": 20, "lorid_temperature": 1.5, "lorid_top_p": 0.9, "lorid_fallback": "majority"}
    stray = [k for k, v in defaults.items() if options.get(k, v) != v]
    if stray and not lorid:
        raise ConfigError(f"--{stray[0].replace('_', '-')} goes with --lorid IR,KG,DR")
    if not lorid:
        targets = targets or [(run.model.name, run.model.name)]
    else:  # opened first: a bad --lorid is refused before any model is evaluated
        from .eval.lorid_runs import open_lorid

        with console.status("loading LoRID's base and its three adapters"):
            lorid = open_lorid(lorid)
        trained = lorid[4]
        if trained.name != run.task.name:
            console.print(f"eval --lorid: note: the adapters were trained on task {trained.name}; evaluating them "
                          f"on {run.task.name} (task.name=... to change)")
    if task.size(run.eval.split) is not None:
        more = f" (eval.n={run.eval.n} asks for more than there are)" if n < run.eval.n else ""
        console.print(f"eval: {n} prompts from {task.describe_split(run.eval.split)}{more}")
    rows = []
    cfg = replace(run.eval, n=n)
    reference = None
    if fidelity_to:
        from .eval import load_reference

        match = [name for label, name in targets if label == fidelity_to] or [fidelity_to]
        with console.status(f"greedy answers of {fidelity_to}"):
            reference = load_reference(replace(run.model, name=match[0]), task, cfg, fidelity_to)
    sources = None
    if provenance:
        names = [x.strip() for x in provenance.split(",")]
        if len(names) != 2 or not all(names):
            raise ConfigError(f"--provenance {provenance!r}: expected TEACHER,BASE_STUDENT (two model names)")
        sources = [load_model(replace(run.model, name=x)) for x in names]
        check_vocab(sources[0][1], sources[1][1])
    thresholds = {k: options.get(k) for k in ("lambda_depth", "lambda_step") if options.get(k) is not None}
    if thresholds and not any(_system15(name) for _, name in targets):
        flags = " and ".join(f"--{k.replace('_', '-')}" for k in thresholds)
        raise ConfigError(f"{flags}: no System-1.5 student (a method=system15 run's model) among the models evaluated")
    for label, name in targets:
        model, tok = load_model(replace(run.model, name=name))
        if thresholds and hasattr(model, "set_thresholds"):  # the System-1.5 student's lambda_depth / lambda_step
            model.set_thresholds(**thresholds)
        ref = reference if reference is not None and label != fidelity_to else None
        # not a terminal: a line every 30 s or 10% of the prompts (greedy, then sampled when k > 1)
        lines = ProgressLines(console, f"eval {label}", n * (2 if cfg.k > 1 else 1), "prompts")
        with console.status(f"evaluating {label}"):
            rows.append((label, evaluate(model, tok, task, cfg, reference=ref,
                                         progress=lines.advance if lines.enabled else None)))
        # which model this was, so that a report given its run directory too shows it once
        rows[-1][1]["model"] = name
        if Path(name).is_dir():
            rows[-1][1]["model_dir"] = str(Path(name).resolve())
            private = model_privacy(name)  # a student trained under privacy.*: its epsilon
            if private is not None:
                rows[-1][1].update(epsilon=private["epsilon"], privacy=private)
        if sources is not None:
            from .curate.provenance import provenance as trace

            check_vocab(tok, sources[0][1])
            with console.status(f"provenance of {label}'s sentences"):
                rows[-1][1]["provenance"] = trace(model.eval(), tok, sources[0][0].eval(), sources[1][0].eval(), task,
                                                  cfg, delta=options.get("provenance_delta", 1.0))
    if lorid:
        rows += _lorid_rows(lorid, cfg, task, options, console)
    console.print(f"eval: answers read as {task.describe_format()}")
    console.print(results_table(rows))
    if sources is not None:
        console.print(provenance_table(rows))
    return {label: r for label, r in rows}


def _system15(name: str) -> bool:
    """Whether `name` is a saved System-1.5 student (its config.json's model type), weights unread."""
    import json

    from .models.system15 import MODEL_TYPE

    try:
        return json.loads((Path(name) / "config.json").read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError):
        return False


def _lorid_rows(opened, cfg, task, options, console) -> list:
    """`--lorid IR,KG,DR` (`opened`: what `open_lorid` gave): LoRID's three adapters on one base
    (`retort.lm.eval.lorid`): the consistency iteration and its two ablations, as rows `lorid`,
    `lorid:ir`, `lorid:dr`."""
    from .eval.lorid import evaluate_lorid

    adapters, tok, templates, paths, _ = opened
    lines = ProgressLines(console, "eval lorid", cfg.n, "prompts")
    with console.status("LoRID: consistency iteration, then IR alone and DR alone"):
        out = evaluate_lorid(adapters, tok, task, cfg, rounds=options.get("lorid_rounds", 20),
                             temperature=options.get("lorid_temperature", 1.5), top_p=options.get("lorid_top_p", 0.9),
                             fallback=options.get("lorid_fallback", "majority"), templates=templates,
                             progress=lines.advance if lines.enabled else None)
    r = out["lorid"]
    r["adapters"] = {role: str(Path(p).resolve()) for role, p in paths.items()}
    console.print(f"lorid: accuracy {r['accuracy']:.3f}, mean iterations {r['mean_iterations']:.2f} (at most "
                  f"{r['rounds']}), IR and DR agreed on {r['agreed']:.0%}; IR alone {out['lorid:ir']['accuracy']:.3f}, "
                  f"DR alone {out['lorid:dr']['accuracy']:.3f} (greedy)")
    return list(out.items())


def provenance_table(rows):
    from rich.table import Table

    from .curate.provenance import CATEGORIES

    table = Table(title="sentence provenance (shares of sentences)")
    for col in ("model", "answers", *[f"{c}" for c in CATEGORIES], *[f"{c} | correct" for c in CATEGORIES[:1]],
                *[f"{c} | incorrect" for c in CATEGORIES[:1]]):
        table.add_column(col)
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for label, r in rows:
        p = r.get("provenance")
        if p:
            table.add_row(label, str(p["answers"]), *[pct(p["overall"][c]) for c in CATEGORIES],
                          pct(p["correct"]["teacher"]), pct(p["incorrect"]["teacher"]))
    return table

"""The `retort` command line. One dict maps command names to functions; `retort --help` lists them.

Every command takes an optional YAML `--config` plus dotted `key=value` overrides. Errors the user
can fix print one line and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import RetortError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _overrides(args) -> list[str]:
    return list(args)


config_option = click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False),
                             help="YAML config file; KEY=VALUE arguments override it.")
overrides_arg = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")


@click.command(context_settings=CONTEXT)
@config_option
@click.option("--resume", is_flag=True, help="Continue the run in `out` from its last checkpoint.")
@overrides_arg
def train(config_file, resume, overrides):
    """Train a student with a method (see `retort methods`).

    \b
    retort train method=sft student.name=preset:student data.source=answers train.steps=200
    retort train -c configs/sft_modchain.yaml out=runs/sft --resume
    """
    from .config import TrainRun, load_config
    from .eval import evaluate
    from .train import train as run_train

    run = load_config(TrainRun, config_file, _overrides(overrides))
    console = _console()
    summary = run_train(run, resume=resume, evaluate=lambda m, t, task: evaluate(m, t, task, run.eval), console=console)
    _print_summary(console, run.out, summary)


def _print_summary(console, out, summary):
    if not summary.get("main_process", True):
        return
    ev = summary.get("eval") or {}
    acc = f", accuracy {ev['accuracy']:.3f} on {ev['n']} {ev.get('split', 'test')} prompts" if "accuracy" in ev else ""
    console.print(f"done: {summary['steps']} steps in {summary['train_time_s']:.0f}s{acc}; model in {out}/model")


@click.command(name="eval", context_settings=CONTEXT)
@config_option
@click.option("--model", "-m", "models", multiple=True,
              help="Model to evaluate (repeatable; overrides model.name). NAME=PATH labels it.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write all results to this JSON file.")
@overrides_arg
def eval_cmd(config_file, models, json_out, overrides):
    """Evaluate one or more models on a task: pass@1, pass@k, maj@k, tokens, by difficulty.

    \b
    retort eval -m builtin:teacher -m runs/sft/model eval.k=8 eval.temperature=0.8
    """
    from dataclasses import replace

    from .config import EvalRun, load_config
    from .eval import evaluate, results_table
    from .models import load_model
    from .tasks import get_task

    run = load_config(EvalRun, config_file, _overrides(overrides))
    task = get_task(run.task)
    targets = [(m.split("=", 1) if "=" in m and not Path(m).exists() else (m, m)) for m in models] or \
              [(run.model.name, run.model.name)]
    console = _console()
    rows = []
    for label, name in targets:
        model, tok = load_model(replace(run.model, name=name))
        with console.status(f"evaluating {label}"):
            rows.append((label, evaluate(model, tok, task, run.eval)))
    console.print(results_table(rows))
    out = json_out or run.out
    if out:
        _write_json(out, {label: r for label, r in rows})
        console.print(f"results: {out}")


def _write_json(path, data):
    import os

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, p)


@click.command(context_settings=CONTEXT)
@config_option
@click.option("--force", is_flag=True, help="Retrain even if a cached teacher exists.")
@overrides_arg
def teacher(config_file, force, overrides):
    """Train the built-in tiny teacher on a built-in task (cached; later runs reuse it).

    \b
    retort teacher                      # modchain, cached in $RETORT_CACHE or ~/.cache/retort
    retort teacher task.name=vars
    """
    from .teacher import ensure_teacher

    ensure_teacher(config_file, list(overrides), force=force, console=_console())


@click.command(context_settings=CONTEXT)
@click.option("--out", default="runs/demo", show_default=True, help="Demo run directory.")
def demo(out):
    """The embedded default end to end: built-in teacher, students, evaluation side by side."""
    from .demo import run_demo

    run_demo(out, console=_console())


@click.command(context_settings=CONTEXT)
@click.option("--n", default=2, show_default=True, help="Examples shown per task.")
def tasks(n):
    """List built-in tasks, their difficulty knobs, and example problems."""
    from .tasks import TASKS

    for name, cls in TASKS.items():
        t = cls()
        knobs = ", ".join(f"{k}={getattr(t, k)} [{lo}..{hi}]" for k, (lo, hi) in cls.knobs.items())
        click.echo(f"{name}: {cls.description}\n  knobs: {knobs}")
        for ex in t.examples("train", n, 0):
            click.echo("  " + (ex.prompt + ex.solution).replace("\n", "\n    | ").rstrip())
    click.echo("file tasks: task.name=PATH.jsonl|.parquet (prompt, answer, optional solution, id); "
               "task.verifier=exact|numeric|math")


@click.command(context_settings=CONTEXT)
def methods():
    """List training methods, their papers and options."""
    import dataclasses

    from .methods import METHODS

    for name, cls in METHODS.items():
        click.echo(f"{name}: {cls.paper}\n  {cls.equation}")
        for f in dataclasses.fields(cls.Config):
            click.echo(f"  method_args.{f.name} = {f.default!r}  {f.metadata.get('doc', '')}")


@click.command(context_settings=CONTEXT)
@click.argument("command", type=click.Choice(["train", "eval", "teacher"]))
def config(command):
    """Show every config key of a command with its default, meaning and allowed values."""
    from .config import EvalRun, TrainRun, describe

    cls = {"train": TrainRun, "eval": EvalRun, "teacher": TrainRun}[command]
    for key, default, doc in describe(cls):
        click.echo(f"{key} = {default}\n    {doc}")


COMMANDS = {"teacher": teacher, "train": train, "eval": eval_cmd, "demo": demo,
            "tasks": tasks, "methods": methods, "config": config}


@click.group(context_settings=CONTEXT, commands=COMMANDS)
@click.version_option(package_name="retort")
def cli():
    """retort: distil the reasoning of a teacher language model into a smaller student."""


def _quiet_libraries() -> None:
    """retort draws its own progress; silence transformers' per-file bars and advisory warnings."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv=None) -> int:
    _quiet_libraries()
    try:
        cli.main(args=argv, prog_name="retort", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except RetortError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

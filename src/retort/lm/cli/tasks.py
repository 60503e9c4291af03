"""`retort tasks`: the built-in tasks, file tasks and reasoning-gym generators; `retort tasks
rg:NAME`: one generator's options with their defaults and its prompt/answer convention."""

from __future__ import annotations

import dataclasses

import click

from ...errors import ConfigError
from ...options import CONTEXT


@click.command(context_settings=CONTEXT)
@click.argument("name", required=False)
@click.option("--n", default=2, show_default=True, help="Examples shown per task.")
def tasks(name, n):
    """List built-in tasks, their difficulty knobs, and example problems.

    NAME (e.g. rg:chain_sum) shows one task: for a reasoning-gym generator, its options
    (task.difficulty.OPTION) with their defaults, and its prompt and answer convention."""
    from ..tasks import TASKS

    if name is not None:
        return _one(name, n)
    for name, cls in TASKS.items():
        t = cls()
        knobs = ", ".join(f"{k}={getattr(t, k)} [{lo}..{hi}]" for k, (lo, hi) in cls.knobs.items())
        click.echo(f"{name}: {cls.description}\n  knobs: {knobs}")
        for ex in t.examples("train", n, 0):
            click.echo("  " + (ex.prompt + ex.solution).replace("\n", "\n    | ").rstrip())
    click.echo("file tasks: task.name=PATH.jsonl|.parquet (prompt, answer, optional solution, id); "
               "task.verifier=exact|numeric|math")
    click.echo("answer formats: task.answer=marker|boxed|tag|final_number|last_line (built-in tasks: marker, "
               "rg: tag under reasoning-gym's system prompt); task.prompt='{format}\\n{question}' (a template), "
               "task.system (a system message; none: none), task.strict=true (no fallback formats)")
    from ..tasks.rg import SOLVERS, generators

    names = generators()
    click.echo(f"reasoning-gym: task.name=rg:GENERATOR, task.difficulty = the generator's options, its own "
               f"prompt convention and answer checker; worked solutions for {', '.join(SOLVERS)} (chain_sum: "
               "task.difficulty.rendering=detours for detours and rewrite skills, as the detours task); "
               + (f"{len(names)} generators: {', '.join(names)}; `retort tasks rg:NAME` shows one's options"
                  if names else "not installed (pip install 'retort[rg]')"))


def _one(name: str, n: int) -> None:
    """One task's options and convention (reasoning-gym) or knobs (built-in), with examples."""
    from ..tasks import TASKS
    from ..tasks.rg import PREFIX

    if name.startswith(PREFIX):
        return _rg(name[len(PREFIX):], n)
    if name not in TASKS:
        raise ConfigError(f"retort tasks {name}: no such task; expected one of {', '.join(TASKS)} or rg:GENERATOR")
    cls = TASKS[name]
    t = cls()
    click.echo(f"{name}: {cls.description}")
    for k, (lo, hi) in cls.knobs.items():
        click.echo(f"  task.difficulty.{k} = {getattr(t, k)}  [{lo}..{hi}]")
    _convention(t)
    for ex in t.examples("train", n, 0):
        click.echo("  " + (ex.prompt + (ex.solution or ex.answer_completion)).replace("\n", "\n    | ").rstrip())


def _rg(generator: str, n: int) -> None:
    from ..tasks.rg import DIFFICULTY, OWN, PREFIX, SOLVERS, ReasoningGymTask

    task = ReasoningGymTask(generator).configure()  # refuses an unknown generator, naming close ones
    from reasoning_gym.factory import DATASETS

    config_cls = DATASETS[generator][1]
    click.echo(f"{PREFIX}{generator}: reasoning-gym's {generator} ({config_cls.__name__})")
    click.echo("  options (task.difficulty.OPTION=VALUE; default):")
    for f in dataclasses.fields(config_cls):
        if f.name in ("seed", "size"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        click.echo(f"    {f.name} = {default!r}")
    click.echo(f"  retort's options: {', '.join(OWN)} (rendering=detours: chain_sum only)")
    key = DIFFICULTY.get(generator)
    click.echo(f"  difficulty (curate --stats by difficulty): metadata {key!r}" if key else
               "  difficulty: none recorded (curate --stats shows no per-difficulty rows)")
    click.echo("  worked solutions: " + ("yes (one line a step)" if generator in SOLVERS else
                                          "none, answers only (train on traces of a teacher)"))
    _convention(task)
    for ex in task.examples("train", n, 0):
        click.echo(f"  example: {str(ex.prompt)!r} -> answer {ex.answer!r}")


def _convention(task) -> None:
    fmt = task.prompt_format()
    click.echo(f"  prompt: template {fmt['template']!r}; system: "
               + (repr(fmt["system"]) if fmt["system"] else "none"))
    click.echo(f"  answer: task.answer={task.describe_format()} (override: task.answer=marker|boxed|tag|"
               "final_number|last_line, task.prompt, task.system, task.strict=true)")

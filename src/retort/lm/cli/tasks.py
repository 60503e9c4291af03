"""`retort tasks`: the built-in tasks, file tasks and reasoning-gym generators."""

from __future__ import annotations


import click

from ...options import CONTEXT

@click.command(context_settings=CONTEXT)
@click.option("--n", default=2, show_default=True, help="Examples shown per task.")
def tasks(n):
    """List built-in tasks, their difficulty knobs, and example problems."""
    from ..tasks import TASKS

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
               + (f"{len(names)} generators: {', '.join(names)}" if names else "not installed (pip install 'retort[rg]')"))



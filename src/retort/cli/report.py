"""`retort report`: one self-contained HTML page comparing runs and evaluations."""

from __future__ import annotations

import click

from ..options import CONTEXT, console


@click.command(context_settings=CONTEXT)
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", default=None, help="HTML file (default: report.html in the first run dir, or beside "
              "the first input when that is a `retort eval --json` file).")
@click.option("--title", default="retort report", show_default=True)
def report(run_dirs, out, title):
    """One self-contained HTML page comparing runs (training run dirs, demo dirs, `retort eval --json`
    files; any mix of tracks): a comparison table per kind of model, loss curves, and each track's own
    sections (accuracy vs tokens, samples, ...)."""
    from .. import api

    path = api.report(list(run_dirs), out, title=title)
    console().print(f"report: {path}")


def command(name="report"):
    return report

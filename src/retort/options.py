"""What every command shares, the core's and the tracks' alike: click's context settings, the
`--config FILE` option and the `KEY=VALUE` overrides, the console (stderr), `-m LABEL=PATH` targets
and the results writer. It sits below the tracks so that a track's own commands (`retort.lm.cli`)
use it without importing the command line above them."""

from __future__ import annotations

import json
from pathlib import Path

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

config_option = click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False),
                             help="YAML config file; KEY=VALUE arguments override it.")
overrides_arg = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")


def console():
    from rich.console import Console

    return Console(stderr=True)


def targets(models) -> list:
    """-m LABEL=PATH (or PATH, its own label) -> [(label, path)]."""
    return [(m.split("=", 1) if "=" in m and not Path(m).exists() else (m, m)) for m in models]


def write_json(path, data) -> None:
    from .paths import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2))

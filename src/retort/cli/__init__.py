"""The `retort` command line: a thin layer over the Python API (`retort.train`, each track's
`Track`). One module per command; a track adds commands of its own (`retort traces`, `retort
curate`, ...) and options of `retort eval` through its `cli` module (`retort.track.TRACKS`), loaded
when asked for, so `retort --help` imports no track's models.

Every command takes an optional YAML `--config` plus dotted `key=value` overrides. Errors the user
can fix print one line and exit with status 2.
"""

from __future__ import annotations

from collections.abc import Mapping

import click

from ..errors import RetortError
from ..options import CONTEXT

# core command -> module (in this package) defining it
CORE = {"train": "train", "eval": "evaluate", "teacher": "teacher", "demo": "demo", "report": "report",
        "methods": "catalogue", "config": "catalogue", "audit": "audit"}


class _Commands(click.Group):
    """The core's commands, then every registered track's own (`cli.COMMANDS`), imported on use."""

    def _track_commands(self) -> dict:
        from ..track import TRACKS, track_cli

        found = {}
        for name in TRACKS:
            module = track_cli(name)
            for cmd_name, cmd in getattr(module, "COMMANDS", {}).items():
                found.setdefault(cmd_name, cmd)
        return found

    def list_commands(self, ctx):
        return sorted({*CORE, *self._track_commands()})

    def get_command(self, ctx, name):
        if name in CORE:
            import importlib

            # built on each use: the track choices and eval options come from the registry as it is now
            return importlib.import_module(f"{__name__}.{CORE[name]}").command(name)
        return self._track_commands().get(name)


@click.group(cls=_Commands, context_settings=CONTEXT)
@click.version_option(package_name="retort")
def cli():
    """retort: distil a teacher into a smaller student: a reasoning language model (the default
    track), a classifier or a few-step generator (`--track` / `track=`; `retort methods` lists every
    track's methods)."""


class _CommandMap(Mapping):
    """name -> click command of every command `retort --help` lists (each built on access)."""

    def __iter__(self):
        return iter(cli.list_commands(None))

    def __len__(self):
        return len(cli.list_commands(None))

    def __getitem__(self, name):
        cmd = cli.get_command(None, name)
        if cmd is None:
            raise KeyError(name)
        return cmd


COMMANDS = _CommandMap()


def _quiet_libraries() -> None:
    """retort draws its own progress; silence transformers' per-file bars and advisory warnings."""
    import os
    import sys

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # e.g. transformers' GGUF de-quantisation bar
    # by environment, not by importing transformers (1.4 s) in commands that never load a model
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported already (a caller's process): its logger is set up
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


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


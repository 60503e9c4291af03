"""`retort teacher`: train a track's built-in teacher once and cache it."""

from __future__ import annotations

import click

from ..options import CONTEXT, config_option, console, overrides_arg


@click.command(context_settings=CONTEXT)
@config_option
@click.option("--force", is_flag=True, help="Retrain even if a cached teacher exists.")
@overrides_arg
def teacher(config_file, force, overrides):
    """Train the built-in teacher of a track on a built-in task (cached; later runs reuse it).

    \b
    retort teacher                      # modchain, cached in $RETORT_CACHE or ~/.cache/retort
    retort teacher task.name=vars
    retort teacher track=classify task.name=digits   # a classifier teacher for a built-in dataset
    retort teacher track=diffuse task.name=digits    # a diffusion teacher (a U-Net) for digits
    """
    from .. import api

    api.teacher(config_file, list(overrides), force=force, console=console())


def command(name="teacher"):
    return teacher

"""`retort methods` and `retort config`: what each track offers and every config key."""

from __future__ import annotations

import click

from ..options import CONTEXT


def _methods():
    from ..track import TRACKS

    @click.command(context_settings=CONTEXT)
    @click.option("--track", "track_name", type=click.Choice(list(TRACKS)), default=None,
                  help="Only this track's methods.")
    def methods(track_name):
        """List training methods of every track, their papers and options."""
        import dataclasses

        from ..track import get_track

        for name in [track_name] if track_name else list(TRACKS):
            track = get_track(name)
            click.echo(f"# track={name}")
            for mname, cls in track.methods.items():
                click.echo(f"{mname}: {cls.paper}\n  {cls.equation}")
                for f in dataclasses.fields(cls.Config):
                    default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # a list's
                    click.echo(f"  method_args.{f.name} = {default!r}  {f.metadata.get('doc', '')}")
    return methods


def _config():
    from ..track import DEFAULT_TRACK, TRACKS

    @click.command(context_settings=CONTEXT)
    @click.argument("command")
    @click.option("--track", "track_name", type=click.Choice(list(TRACKS)), default=DEFAULT_TRACK, show_default=True,
                  help="The track whose config is shown.")
    def config(command, track_name):
        """Show every config key of a command (train, eval, teacher, and a track's own, e.g. traces)
        with its default, meaning and allowed values."""
        from ..config import describe
        from ..track import get_track

        classes = get_track(track_name).config_classes()
        if command not in classes:
            raise click.UsageError(f"{command!r}: track={track_name} has configs for {', '.join(classes)}")
        cfg = classes[command]
        if not isinstance(cfg, type):  # a function: the config with its defaults applied (a teacher's)
            cfg = cfg(None, [])
        for key, default, doc in describe(cfg):
            click.echo(f"{key} = {default}\n    {doc}")
    return config


def command(name):
    return _methods() if name == "methods" else _config()

"""`retort demo`: a track's embedded default end to end."""

from __future__ import annotations

import click

from ..options import CONTEXT, console


def command(name="demo"):
    from ..track import DEFAULT_TRACK, TRACKS, track_cli

    summaries = "; ".join(f"{n}: {e.summary}" for n, e in TRACKS.items() if e.summary)
    # each track's line names the track: "classify (default all): ce, kd, ..."
    listed = " ".join(getattr(track_cli(n), "DEMO_METHODS", "") for n in TRACKS if track_cli(n) is not None)

    @click.command(context_settings=CONTEXT)
    @click.option("--track", "track_name", type=click.Choice(list(TRACKS)), default=DEFAULT_TRACK, show_default=True,
                  help=summaries + ".")
    @click.option("--out", default=None, help="Demo run directory [default: the track's, e.g. runs/demo].")
    @click.option("--methods", default=None, help="Comma-separated students to train and compare. " + listed)
    @click.option("--seed", default=0, show_default=True, help="Seed of every student run (init, data order, "
                  "rollouts).")
    def demo(track_name, out, methods, seed):
        """The embedded default end to end: built-in teacher, (teacher traces,) students, evaluation
        side by side, and an HTML report (OUT/report.html)."""
        from .. import api

        names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        api.demo(track_name, out, names, seed, console=console())

    return demo

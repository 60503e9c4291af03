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
    @click.option("--real", is_flag=True, help="Distil a real model instead (installed packages, nothing "
                  "downloaded): the packaged Qwen2.5-Coder-0.5B-Instruct teacher's traces on 2-term arithmetic, "
                  "SmolLM2-135M-Instruct students by sft and by cross-tokenizer kd, evaluation and report "
                  "[default --out: runs/demo_real].")
    @click.option("--size", type=click.Choice(["full", "tiny"]), default="full", show_default=True,
                  help="With --real: full (sized for about 30 minutes on 2 quiet cores: an estimate, not yet timed "
                  "there) or tiny (a smoke test: 8 prompts, 2 steps, 8 test problems).")
    def demo(track_name, out, methods, seed, real, size):
        """The embedded default end to end: built-in teacher, (teacher traces,) students, evaluation
        side by side, and an HTML report (OUT/report.html). `--real`: the same with real models."""
        from .. import api

        if size != "full" and not real:
            raise click.UsageError("--size goes with --real")
        names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        api.demo(track_name, out, names, seed, console=console(), real=size if real else None)

    return demo

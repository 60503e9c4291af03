"""The classifier track's own command (`retort generations`) and its line in `retort demo --help`.
Imports click only: the command imports the track when run."""

from __future__ import annotations

import json

import click

from ..options import CONTEXT, config_option, console, overrides_arg


@click.command(context_settings=CONTEXT)
@config_option
@click.argument("n", type=int)
@click.option("--alpha-hat", is_flag=True, help="method=borup: per generation, train at alpha=0 and alpha=1, "
              "estimate the best alpha on the validation split, train at it.")
@overrides_arg
def generations(config_file, n, alpha_hat, overrides):
    """A chain of N self-distillation generations (track=classify): generation 1 learns from
    teacher.name, each next one from the previous; OUT/gen-K run dirs and OUT/generations.json
    (accuracy, calibration, agreement and KL with the base teacher per generation). Resumable.

    \b
    retort generations 5 track=classify task.name=digits method=borup method_args.alpha=0.35 \\
        student.name=mlp:512-512 teacher.name=builtin:teacher out=runs/borup
    retort generations 10 track=classify method=recursive method_args.a=0.3 out=runs/rec
    """
    from ..config import load_config, peek_track
    from ..track import DEFAULT_TRACK

    if peek_track(config_file, list(overrides), DEFAULT_TRACK) != "classify":
        raise click.UsageError("generations runs classifier chains: pass track=classify")
    from .generations import run_generations
    from .track import TRACK

    run = load_config(TRACK.run_config, config_file, list(overrides))
    result = run_generations(run, n, alpha_hat_search=alpha_hat, console=console())
    click.echo(json.dumps(result["generations"], indent=1))


COMMANDS = {"generations": generations}
EVAL_OPTIONS: list = []
DEMO_METHODS = ("classify (default ce,kd,dkd,pld,lelp): ce, kd, dkd, pld, lelp, swing; borup, recursive (2-generation "
                "chains).")

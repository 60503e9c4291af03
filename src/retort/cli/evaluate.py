"""`retort eval`: models side by side on one task (any track). A track adds options of its own
(`cli.EVAL_OPTIONS` of its entry in `retort.track.TRACKS`); giving one to another track is refused."""

from __future__ import annotations

import click

from ..options import CONTEXT, config_option, console, overrides_arg

CORE_PARAMS = ("config_file", "models", "json_out", "fidelity_to", "overrides")


def _track_options() -> dict[str, list]:
    from ..track import TRACKS, track_cli

    return {name: list(getattr(track_cli(name), "EVAL_OPTIONS", [])) for name in TRACKS}


def command(name="eval"):
    by_track = _track_options()

    @click.command(name="eval", context_settings=CONTEXT)
    @config_option
    @click.option("--model", "-m", "models", multiple=True,
                  help="Model to evaluate (repeatable; overrides model.name). NAME=PATH labels it.")
    @click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write all results to this JSON file.")
    @click.option("--fidelity-to", "fidelity_to", metavar="LABEL",
                  help="Also measure every other model's agreement with this one (a -m label or model name, e.g. "
                       "the teacher): for language models the same final answer, the same top-1 token and KL per "
                       "token on its greedy answers; for classifiers top-1 agreement and KL.")
    @overrides_arg
    def eval_cmd(config_file, models, json_out, fidelity_to, overrides, **track_options):
        """Evaluate one or more models on a task, side by side (language models: pass@1, pass@k, maj@k,
        tokens, by difficulty; `track=NAME` for another family of models).

        \b
        retort eval -m builtin:teacher -m runs/sft/model eval.k=8 eval.temperature=0.8
        retort eval -m teacher=builtin:teacher -m sft=runs/sft/model --fidelity-to teacher
        retort eval -m sft=runs/sft/model --provenance builtin:teacher,preset:student
        retort eval task.name=calc agent=code agent.sag=4 -m student=runs/agent-student/model
        retort eval track=classify task.name=mnist -m teacher=ccexam:mnist -m kd=runs/kd/model --fidelity-to teacher
        retort eval track=diffuse task.name=digits -m dmd2=runs/dmd2/model steps=[1,2,4] --hybrid 1
        """
        from .. import api
        from ..config import peek_track
        from ..track import DEFAULT_TRACK

        track = peek_track(config_file, list(overrides), DEFAULT_TRACK)
        mine = {opt.name for opt in by_track.get(track, [])}
        for other, opts in by_track.items():
            for opt in opts:
                if opt.name not in mine and track_options.get(opt.name) not in (None, False, opt.default):
                    raise click.UsageError(f"{opt.opts[0]} is an option of track={other}: pass track={other}")
        options = {k: v for k, v in track_options.items() if k in mine}
        api.evaluate(models, console=console(), config_file=config_file, overrides=list(overrides),
                     json_out=json_out, fidelity_to=fidelity_to, options=options)

    seen = set()
    for opts in by_track.values():
        for opt in opts:
            if opt.name not in seen:  # two tracks may share an option
                seen.add(opt.name)
                eval_cmd.params.insert(len(eval_cmd.params) - 1, opt)
    return eval_cmd

"""`retort train`: one student, one method, one run directory (any track)."""

from __future__ import annotations

import click

from ..options import CONTEXT, config_option, console, overrides_arg


@click.command(context_settings=CONTEXT)
@config_option
@click.option("--resume", is_flag=True, help="Continue the run in `out` from its newest intact checkpoint (a "
              "damaged one is moved aside); a finished run is left as it is; with no run there yet, one is started.")
@overrides_arg
def train(config_file, resume, overrides):
    """Train a student with a method (see `retort methods`); `track=NAME` picks the family of
    students (`retort methods` lists the tracks).

    \b
    retort train method=sft student.name=preset:student data.source=answers train.steps=200
    retort train -c configs/student_solutions.yaml out=runs/sft --resume
    retort train track=classify task.name=digits method=kd student.name=mlp:32 out=runs/kd
    retort train track=diffuse task.name=ring method=dmd2 student.steps=1 out=runs/dmd2
    """
    from .. import api

    out = console()
    run = api.train_config(config_file, list(overrides))
    summary = api.train(run, resume=resume, console=out, announce_new=resume)
    print_summary(out, run.out, summary)


def command(name="train"):
    return train


def print_summary(out, run_dir, summary):
    if not summary.get("main_process", True):
        return
    ev = summary.get("eval") or {}
    acc = f", accuracy {ev['accuracy']:.3f} on {ev.get('n', '?')} {ev.get('split', 'test')} {ev.get('unit', 'prompts')}" if "accuracy" in ev else ""
    dp = summary.get("privacy") or {}
    private = f", (ε={dp['epsilon']:.2f}, δ={dp['delta']:.1e})-DP" if "epsilon" in dp else ""
    out.print(f"done: {summary['steps']} steps in {summary['train_time_s']:.0f}s{acc}{private}; model in {run_dir}/model")

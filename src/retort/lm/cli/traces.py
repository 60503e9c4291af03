"""`retort traces`: sample, verify and store teacher completions (resumable)."""

from __future__ import annotations


import click

from ...options import CONTEXT, config_option, console as _console, overrides_arg

@click.command(context_settings=CONTEXT)
@config_option
@click.option("--batch-out", type=click.Path(), help="API teacher: write the requests not yet answered as an "
              "OpenAI batch file (JSONL) instead of sending them.")
@click.option("--batch-in", type=click.Path(), help="API teacher: read a batch's results (JSONL: custom_id, "
              "response) into the trace set instead of sending requests.")
@overrides_arg
def traces(config_file, batch_out, batch_in, overrides):
    """Sample teacher completions, verify and score each, store them as resumable Parquet shards.

    \b
    retort traces out=runs/traces n_prompts=2000 sampling.n=4 sampling.temperature=0.8
    retort traces -c configs/traces_smollm2.yaml sampling.topk=16
    retort traces teacher.name=openai:MODEL teacher.api.base_url=http://HOST:8000/v1 out=runs/api
    retort traces agent=code task.name=calc teacher.name=builtin:teacher-calc out=runs/agent  # CodeAct episodes
    Rerun the same command after a crash: it continues where it stopped (an API teacher's
    answers already received are never requested again). With a local teacher, rerun with a
    lower n_prompts to end the set at that size, or a higher one to continue it.
    """
    from ...config import load_config
    from ..config import TracesRun
    from ..traces import run_traces

    if batch_out and batch_in:
        raise click.UsageError("--batch-out and --batch-in: one at a time (write the requests, run them, read back)")
    run_traces(load_config(TracesRun, config_file, list(overrides)), console=_console(),
               batch_out=batch_out, batch_in=batch_in)



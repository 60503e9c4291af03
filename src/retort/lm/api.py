"""The language-model track's own Python API (beside `retort.api`): make teacher traces and
filter them, with the typed config `retort traces` reads and the functions `retort curate` calls.

    import retort
    path = retort.traces(out="runs/traces", n_prompts=200, sampling={"n": 4, "temperature": 0.8})
    stats = retort.curate_traces(path, "runs/traces_ok", correct_only=True, first_k_correct=1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


def traces_config(config_file: Optional[str] = None, overrides: Sequence[str] = (), **fields):
    """The typed config `retort traces` would read."""
    from ..config import load_config
    from .config import TracesRun

    return load_config(TracesRun, config_file, list(overrides), values=fields or None)


def traces(run=None, *, console=None, batch_out: Optional[str] = None, batch_in: Optional[str] = None,
           config_file: Optional[str] = None, overrides: Sequence[str] = (), **fields) -> Path:
    """`retort traces`: sample, verify and store the teacher's completions (resumable: the same call
    again continues where it stopped); returns the trace set's directory."""
    from .traces import run_traces

    if run is None:
        run = traces_config(config_file, overrides, **fields)
    return run_traces(run, console=console, batch_out=batch_out, batch_in=batch_in)


def curate_traces(src: str, out: str, **filters) -> dict:
    """`retort curate SRC --out OUT` with filters and selections (`correct_only`, `max_tokens`,
    `first_k_correct`, `pairs`, `das_student`, ...: `retort.lm.curate.filter_traces`); returns the
    statistics of the new set."""
    from .curate import filter_traces

    return filter_traces(src, out, **filters)


def packaged_models() -> list[dict]:
    """`retort models`: each packaged real model (name, upstream model, size, licence, what it is good
    for, the rollout engine that runs it, whether it is installed, the pip command that installs it)."""
    from .models.packaged import catalogue
    from .rollout.fast import engine_for

    return [{**row, "engine": engine_for(row["family"])} for row in catalogue()]

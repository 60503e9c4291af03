"""The built-in teacher of any track: one run directory in the cache (`$RETORT_CACHE` or
~/.cache/retort), trained once with the track's teacher config and reused by every later run; a
crash mid-training resumes from its last checkpoint, a teacher cached with other settings is refused
(`cached_teacher`), and `builtin:teacher` names it (`retort.paths.resolve_builtin`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import ConfigError
from ..lock import hold
from ..paths import atomic_write_text, remove_run


def cached_teacher(run, force: bool) -> Optional[dict]:
    """The report (`teacher.json`) of a teacher already trained in `run.out` with this config, or
    None when there is none (or `force`). A teacher trained with other settings is refused: the
    cache never silently serves a different model."""
    from ..config import saved_config_diff

    out = Path(run.out)
    report = out / "teacher.json"
    if force or not report.is_file():
        return None
    diff = saved_config_diff(out / "config.yaml", run) if (out / "config.yaml").is_file() else []
    if diff:
        raise ConfigError(f"teacher: the teacher cached in {out} was trained with other settings (differ at "
                          f"{', '.join(diff)}); pass --force to train it again with these")
    return json.loads(report.read_text())


def ensure_teacher(run, *, force: bool, console, report: Callable[[dict, float], dict],
                   cached: Callable[[dict], str], trained: Callable[[dict], str], evaluate=None,
                   note: str = "resumable") -> Path:
    """The model directory of the teacher `run` trains, training it first unless it is cached.
    `report(summary, seconds) -> info` measures the trained teacher (and may refuse it: the error
    leaves the run to resume); `info` is written to teacher.json. `cached(info)` / `trained(info)`:
    the line the user reads in either case. A cached teacher is only read; training holds the
    entry's lock (`retort.lock`), so a second command that would train it too is refused at once."""
    from .loop import train

    def say(msg: str) -> None:
        if console is not None:
            console.print(msg)

    out = Path(run.out)
    info = cached_teacher(run, force)
    if info is not None:
        say(f"teacher: cached in {out} ({cached(info)})")
        return out / "model"
    with hold(out, "out"):  # one writer per cache entry (`train` inside holds the same lock)
        if force:
            remove_run(out)
        say(f"teacher: training {run.student.name} on {run.task.name} into {out} ({note})")
        t0 = time.time()
        summary = train(run, resume=True, evaluate=evaluate, console=console)
        info = report(summary, round(time.time() - t0, 1))
        atomic_write_text(out / "teacher.json", json.dumps(info, indent=2))
    say(f"teacher: {trained(info)}; cached in {out}")
    return out / "model"

"""Tasks: prompts with reference answers and worked solutions, and a way to check answers.

`TASKS` names the built-in procedural tasks; `get_task` also accepts a .jsonl/.parquet file.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from .answers import MODES as ANSWER_MODES
from .base import ANSWER_MARK, Example, Prompt, Task, require_examples
from .builtin import BUILTIN as TASKS
from .calc import Calc
from .files import FileTask
from .verify import VERIFIERS

TASKS[Calc.name] = Calc  # in its own module (it builds on builtin's); a built-in task like the others


def get_task(cfg) -> Task:
    """Build the task a `TaskConfig` names."""
    fmt = {k: getattr(cfg, k, None) for k in ("prompt", "system", "answer")}
    fmt["strict"] = bool(getattr(cfg, "strict", False))
    if cfg.name in TASKS:
        return TASKS[cfg.name](**(cfg.difficulty or {})).configure(**fmt)
    if cfg.name.startswith("rg:"):
        from .rg import ReasoningGymTask

        return ReasoningGymTask(cfg.name[3:], **(cfg.difficulty or {})).configure(**fmt)
    if Path(cfg.name).suffix in (".jsonl", ".parquet"):
        if cfg.difficulty:
            raise ConfigError("task.difficulty applies to built-in tasks only")
        return FileTask(cfg.name, cfg.verifier, cfg.test_fraction).configure(**fmt)
    raise ConfigError(f"task.name={cfg.name!r}: not a built-in task ({', '.join(TASKS)}), rg:GENERATOR "
                      "(reasoning-gym) nor a .jsonl/.parquet file")


__all__ = ["ANSWER_MARK", "ANSWER_MODES", "Example", "Prompt", "FileTask", "Task", "TASKS", "VERIFIERS", "get_task", "require_examples"]

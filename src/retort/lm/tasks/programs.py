"""Answers given as Python programs (program distillation, PAL): a completion is a program, run in
the sandbox (`retort.sandbox`); its answer is the last line it prints, checked by the task's own
checker. `ProgramTask` wraps any task that way (`program=python`); a built-in task whose worked
solutions are programs (`progs`) is one by itself.

Jie & Lu, "Leveraging Training Data in Few-Shot Prompting for Numerical Reasoning" (ACL 2023
Findings, arXiv 2305.18170; repo allanj/dynamic-pal): a program is correct when its output matches
the answer (the repo: |ans - gold| < 1e-2; here the task's checker, numeric where the task's is).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from ...sandbox import Limits, run
from .base import Task

PROGRAM_LIMITS = Limits(timeout_s=10, cpu_s=5, memory_mb=2048)  # `ProgramConfig`'s defaults
FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_program(text: str) -> str:
    """The program in a completion: its first fenced code block (```python ... ```); else the text
    up to a closing fence (a PAL prompt opened the block), or the whole text (a model trained on
    bare programs writes no fence)."""
    first = text.find("```")
    if first < 0:
        return text.strip("\n")
    if text[:first].strip() and not text.startswith(("```python", "```py"), first):
        return text[:first].strip("\n")  # code, then the closing fence of a block the prompt opened
    m = FENCE.search(text)
    return (m.group(1) if m else text[:first]).strip("\n")


def output_answer(stdout: str) -> str | None:
    """A program's answer: the last non-empty line it printed (None: it printed nothing)."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else None


class ProgramTask(Task):
    """`inner` with answers read by running them: `extract_answer(text)` runs the program in `text`
    in the sandbox and reads its output (`output_answer`); `verify` checks that answer with
    `inner`'s checker. Every run is cached by program text, so verifying and reading the same
    completion runs it once; `prepare` runs many at once (`workers` sandboxes in parallel)."""

    program = "python"

    def __init__(self, inner: Task, limits: Limits = PROGRAM_LIMITS, workers: int = 2):
        self.inner, self.limits, self.workers = inner, limits, workers
        self.name, self.description = inner.name, inner.description
        self.answer_mode, self.strict = inner.answer_mode, inner.strict
        self.runs: dict = {}

    # the prompts, splits and formats are the inner task's
    def examples(self, split, n, seed=0):
        return self.inner.examples(split, n, seed)

    def size(self, split):
        return self.inner.size(split)

    def count(self, split, n, seed=0):
        return self.inner.count(split, n, seed)

    def describe_split(self, split):
        return self.inner.describe_split(split)

    def prompt_format(self):
        return self.inner.prompt_format()

    def describe_format(self) -> str:
        how = "exactly" if hasattr(self.inner, "check_answer") else f"as {Task.describe_format(self.inner)}"
        return f"the last line a python program prints (sandboxed), checked {how}"

    def execute(self, text: str):
        """The sandbox's `Result` of the program in `text` (cached)."""
        code = extract_program(text)
        if code not in self.runs:
            self.runs[code] = run(code, self.limits)
        return self.runs[code]

    def prepare(self, texts) -> None:
        """Run the programs of `texts` not yet run, `workers` at a time."""
        todo = list(dict.fromkeys(c for c in map(extract_program, texts) if c not in self.runs))
        if not todo:
            return
        with ThreadPoolExecutor(self.workers) as pool:
            for code, res in zip(todo, pool.map(lambda c: run(c, self.limits), todo)):
                self.runs[code] = res

    def extract_answer(self, text: str, question: str | None = None) -> str | None:
        res = self.execute(text)
        return output_answer(res.stdout) if res.ok else None

    def verify(self, text: str, reference: str, question: str | None = None) -> bool:
        got = self.extract_answer(text, question)
        if got is None:
            return False
        if hasattr(self.inner, "check_answer"):  # a task whose own answers are programs (progs)
            return self.inner.check_answer(got, reference)
        return self.inner.verify(self.inner.completion_of(got), reference, question)

    def completion_of(self, answer: str) -> str:
        """A program printing `answer` (how a majority vote is verified)."""
        return f"print({answer!r})"


def as_program(task: Task, cfg) -> ProgramTask:
    """`task` with answers read by running them, under the limits of a `ProgramConfig` (`cfg`);
    refused in one line, before any model is loaded, where the sandbox cannot start."""
    from ...sandbox import check

    limits = cfg.limits()
    check(limits)
    return ProgramTask(task.inner if isinstance(task, ProgramTask) else task, limits, cfg.workers)


__all__ = ["FENCE", "ProgramTask", "as_program", "extract_program", "output_answer"]

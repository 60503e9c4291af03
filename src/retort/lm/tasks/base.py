"""The Task contract: examples(split, n, seed), extract_answer(text), verify(text, reference).

A completion the student learns from is the worked `solution` (reasoning lines ending in the
answer line) or, for answer-only training, just `answer_completion`. Both end with the same answer
marker, so `extract_answer` reads either.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Optional

ANSWER_MARK = "A:"


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    answer: str
    solution: Optional[str] = None
    difficulty: Optional[int] = None

    @property
    def answer_completion(self) -> str:
        return f"{ANSWER_MARK}{self.answer}"


def in_test_split(key: str, test_share: int = 10) -> bool:
    """Deterministic split by content hash: 1 in `test_share` problems belongs to the test split.

    Hashing the problem (not its position) keeps train and test disjoint for every seed and n.
    """
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % test_share == 0


class Task:
    """Base class. Subclasses set `name` and implement `examples`; verification defaults to
    comparing the extracted answer with the reference after whitespace normalisation."""

    name = "task"
    description = ""
    # words that open a new thought in this task's traces (Retro-Search's switch points); empty:
    # curate --retro-search uses its general list
    transitions: tuple = ()
    # prompts a built-in teacher of this task learns besides solving it ({"dap": ..., "uniform": ...},
    # see `skill_examples`); curate --rewrite reads them from the teacher's run
    rewrite_templates: dict = {}

    def skill_examples(self, n: int, seed: int = 0, split: str = "train") -> list["Example"]:
        """Extra training examples for the task's built-in teacher (data.skills): e.g. rewriting a
        trace to a budget. None by default."""
        return []

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        raise NotImplementedError

    def size(self, split: str) -> Optional[int]:
        """How many distinct examples `split` holds; None for a procedural task (unlimited)."""
        return None

    def count(self, split: str, n: int, seed: int = 0) -> int:
        """How many distinct examples of `split` a request for `n` gets: n, or all of them when the
        split holds fewer (a file's split; a generator whose options allow fewer problems)."""
        size = self.size(split)
        return n if size is None else min(n, size)

    def describe_split(self, split: str) -> str:
        """Where the examples of `split` come from, for messages about it."""
        return f"the {split} split of task {self.name}"

    def extract_answer(self, text: str) -> Optional[str]:
        """The answer after the last answer marker, up to the end of its line."""
        i = text.rfind(ANSWER_MARK)
        if i < 0:
            return None
        line = text[i + len(ANSWER_MARK):].split("\n", 1)[0].strip()
        return line or None

    def verify(self, text: str, reference: str) -> bool:
        got = self.extract_answer(text)
        return got is not None and _norm(got) == _norm(reference)

    def completion_of(self, answer: str) -> str:
        """A completion whose extracted answer is `answer` (how a majority vote is verified)."""
        return f"{ANSWER_MARK}{answer}"

    def reward(self, text: str, reference: str) -> float:
        return 1.0 if self.verify(text, reference) else 0.0


def require_examples(task: Task, split: str, n: int, what: str, seed: int = 0) -> int:
    """How many examples of `split` a command asking for `n` (with `seed`) gets (all of them, for a
    finite split smaller than n: `Task.count`). An empty split is refused, naming where its examples
    would have come from."""
    from ...errors import DataError

    got = task.count(split, n, seed)
    if got == 0:
        # a file task's held-out share (`FileTask.test_fraction`) can be empty where the file is not
        hint = " (set task.test_fraction=0 to use the whole file)" if split == "test" and \
            getattr(task, "test_fraction", 0) else ""
        raise DataError(f"{what}: no examples in {task.describe_split(split)}{hint}")
    return got


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip())

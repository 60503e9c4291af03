"""User tasks from JSONL or Parquet: rows of `prompt`, `answer`, optional `solution` and `id`.

Every row is checked when the file is read; the first bad one stops the run with its file, line
(1-based; the row number for Parquet) and field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ...errors import ConfigError, DataError
from . import answers
from .base import Example, Task, in_test_split
from .verify import COMPARE, VERIFIERS

REQUIRED = ("prompt", "answer")
OPTIONAL = ("solution", "id", "difficulty")


def _check_row(row, where: str, path: str) -> Example:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields prompt, answer; got {type(row).__name__}")
    for key in REQUIRED:
        if key not in row or row[key] is None:
            raise DataError(f"{where}: missing required field '{key}' (rows need prompt, answer; optional solution, id)")
    prompt, answer = row["prompt"], row["answer"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: field 'prompt' must be a non-empty string, got {prompt!r:.60}")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"{where}: field 'answer' must be a non-empty string or number, got {answer!r:.60}")
    solution = row.get("solution")
    if solution is not None and not isinstance(solution, str):
        raise DataError(f"{where}: field 'solution' must be a string, got {type(solution).__name__}")
    difficulty = row.get("difficulty")
    if difficulty is not None and not isinstance(difficulty, int):
        raise DataError(f"{where}: field 'difficulty' must be an integer, got {difficulty!r:.60}")
    rid = row.get("id")
    return Example(str(rid) if rid is not None else "", prompt, answer.strip(), solution, difficulty)


def read_rows(path: str) -> list[Example]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"task file not found: {path}")
    rows: list[Example] = []
    if p.suffix == ".jsonl":
        with p.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a BOM some editors write
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                    f"{e.start + 1}); save the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                rows.append(_check_row(row, f"{path}:{lineno}", path))
    elif p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        missing = [k for k in REQUIRED if k not in table.column_names]
        if missing:
            raise DataError(f"{path}: missing required column(s) {', '.join(missing)}; found {', '.join(table.column_names)}")
        for i, row in enumerate(table.to_pylist(), 1):
            rows.append(_check_row(row, f"{path}: row {i}", path))
    else:
        raise DataError(f"{path}: task files must end in .jsonl or .parquet")
    if not rows:
        raise DataError(f"{path}: no rows")
    seen = set()
    for i, ex in enumerate(rows):
        if ex.id in seen:
            raise DataError(f"{path}: duplicate id {ex.id!r}")
        if ex.id:
            seen.add(ex.id)
    return [ex if ex.id else Example(f"row-{i}", ex.prompt, ex.answer, ex.solution, ex.difficulty) for i, ex in enumerate(rows)]


class FileTask(Task):
    """Rows from a file; the test split is a fixed hash-chosen share of the prompts."""

    def __init__(self, path: str, verifier: str = "numeric", test_fraction: float = 0.1):
        if verifier not in VERIFIERS:
            raise ConfigError(f"task.verifier={verifier!r}: expected one of {', '.join(VERIFIERS)}")
        self.name = Path(path).stem
        self.path = path
        self._extract, self._verify = VERIFIERS[verifier]
        self.verifier = verifier
        self.answer = None  # task.answer: None, the verifier reads the answer as it always has
        rows = read_rows(path)
        self.n_rows, self.test_fraction = len(rows), test_fraction
        share = max(1, round(1 / test_fraction)) if test_fraction > 0 else None
        if share is None:
            self._splits = {"train": rows, "test": rows}
        else:
            test = [r for r in rows if in_test_split(r.prompt, share)]
            train = [r for r in rows if not in_test_split(r.prompt, share)]
            self._splits = {"train": train, "test": test}

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        import random

        rows = list(self._splits[split])
        if split == "train" and rows:
            random.Random(seed).shuffle(rows)
            # Unlimited like the procedural tasks: cycle through the rows for as many as asked.
            return [self.in_format(rows[i % len(rows)]) for i in range(n)] if rows else []
        return [self.in_format(r) for r in rows[:n]]

    def configure(self, prompt=None, system=None, answer=None, strict=False) -> "FileTask":
        super().configure(prompt, system, answer, strict)
        self.answer = answer
        return self

    def describe_format(self) -> str:
        return super().describe_format() if self.answer else f"the {self.verifier} verifier's reading"

    def default_template(self) -> str:
        return "{question}"  # the file's prompt as its author wrote it

    def size(self, split: str) -> Optional[int]:
        return len(self._splits[split])

    def describe_split(self, split: str) -> str:
        if not self.test_fraction:
            return f"{self.path} (all {self.n_rows} rows: task.test_fraction=0)"
        return (f"the {split} split of {self.path} ({len(self._splits[split])} of its {self.n_rows} rows; "
                f"task.test_fraction={self.test_fraction} holds out {len(self._splits['test'])} as the test split)")

    def extract_answer(self, text: str, question: Optional[str] = None) -> Optional[str]:
        if self.answer is None:
            return self._extract(text, question)
        return answers.extract(text, self.answer_mode, question, strict=self.strict)

    def completion_of(self, answer: str) -> str:
        # math-verify reads LaTeX: "A:1/2" or "A:\sqrt{2}" does not parse as the answer, \boxed{} does
        if self.answer is None and self.verifier == "math":
            return f"\\boxed{{{answer}}}"
        return super().completion_of(answer)

    def verify(self, text: str, reference: str, question: Optional[str] = None) -> bool:
        if self.answer is None:
            return self._verify(text, reference, question)
        got = self.extract_answer(text, question)
        return got is not None and COMPARE[self.verifier](got, reference)

"""The Task contract: examples(split, n, seed), extract_answer(text, question), verify(text,
reference, question).

A completion the student learns from is the worked `solution` (reasoning lines ending in the
answer line) or, for answer-only training, just the answer (`completion_of`). Both end with the
answer in the task's answer format (`answers`), so `extract_answer` reads either.

The prompt and answer format are data (`configure`, from `task.prompt`, `task.system`,
`task.answer`, `task.strict`): an example's prompt is the task's question put into the prompt
template, carrying its system message with it (`Prompt`), so every place that renders a prompt
(`data.collate.encode_prompt`) sends the same messages.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, replace
from typing import Optional

from . import answers
from .answers import MARKER as ANSWER_MARK


class Prompt(str):
    """A prompt's user text, with the system message it goes with (`system`, None for none).

    A str, so everything that reads prompts as text keeps working; `encode_prompt` puts `system` in
    the chat template's system turn (or before the text, without a template: `with_system`)."""

    system: Optional[str] = None

    def __new__(cls, text: str, system: Optional[str] = None):
        self = super().__new__(cls, text)
        self.system = system or None
        return self

    def __reduce__(self):
        return Prompt, (str(self), self.system)


def with_system(prompt: str) -> str:
    """The prompt as one text: its system message, a blank line, the user text (no chat template)."""
    system = getattr(prompt, "system", None)
    return f"{system}\n\n{prompt}" if system else str(prompt)


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    answer: str
    solution: Optional[str] = None
    difficulty: Optional[int] = None
    # a worked solution that is a conversation (the turns after the prompt: assistant / tool), for a
    # task answered by an agent (`calc`); `sft` on solutions trains its assistant turns only
    messages: Optional[list] = None

    @property
    def answer_completion(self) -> str:
        """The bare answer after the marker (`Task.completion_of` writes it in the task's format)."""
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

    # the answer format the task's prompts ask for unless `task.answer` says otherwise (`answers.MODES`)
    answer_mode = "marker"
    # a system message unless `task.system` says otherwise
    default_system: Optional[str] = None
    strict = False  # read only the answer format, no fallbacks (`answers.extract`)
    template: Optional[str] = None  # `task.prompt`; None: `default_template()`
    system: Optional[str] = None

    def configure(self, prompt: Optional[str] = None, system: Optional[str] = None, answer: Optional[str] = None,
                  strict: bool = False) -> "Task":
        """Apply `task.prompt` / `task.system` / `task.answer` / `task.strict` (None keeps the task's own)."""
        from ...errors import ConfigError

        if answer is not None:
            if answer not in answers.MODES:
                raise ConfigError(f"task.answer={answer!r}: expected one of {', '.join(answers.MODES)}")
            self.answer_mode = answer
        if prompt is not None:
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None}
            except ValueError as e:
                raise ConfigError(f"task.prompt={prompt!r}: not a template ({e}); write {{question}} where the "
                                  "question goes (and {format} for the answer instruction); double other braces") from None
            if fields - {"question", "format"} or "question" not in fields:
                raise ConfigError(f"task.prompt={prompt!r}: a template takes {{question}} (required) and {{format}}; "
                                  f"got {', '.join('{' + f + '}' for f in sorted(fields)) or 'no field'}")
            self.template = prompt
        # "" or "none": no system message (an empty override reaches here as None, the task's own)
        no_system = system is not None and system.strip().lower() in ("", "none")
        self.system = self.default_system_for(self.answer_mode) if system is None else \
            (None if no_system else system)
        self.strict = bool(strict)
        return self

    def default_system_for(self, mode: str) -> Optional[str]:
        return self.default_system if mode == type(self).answer_mode else None

    def default_template(self) -> str:
        """The question alone in the task's own format; with another format, its instruction first
        and the question last (next to where the answer starts: a small model reads the operands
        from the end of the prompt)."""
        return "{question}" if self.answer_mode == type(self).answer_mode else "{format}\n{question}"

    def render(self, question: str) -> str:
        """The prompt of `question`: the template filled in, carrying the system message."""
        text = (self.template or self.default_template()).format(
            question=question, format=answers.INSTRUCTIONS[self.answer_mode])
        system = self._system()
        return Prompt(text, system) if system else text

    def _system(self) -> Optional[str]:
        # a task built without `configure` (TASKS[name]() in code) has its own system message
        return self.system if "system" in vars(self) else self.default_system_for(self.answer_mode)

    def prompt_format(self) -> dict:
        """The prompt and answer format resolved (a trace set's manifest records it, so that the
        student learns the format the teacher was prompted with): answer, strict, system, template."""
        return {"answer": self.answer_mode, "strict": self.strict,
                "system": self._system(),
                "template": self.template or self.default_template()}

    def describe_format(self) -> str:
        """How answers are read, for messages and results: "marker", "boxed (strict)", "tag (else
        boxed, 'answer is', final_number)"."""
        if self.answer_mode == "marker" or self.strict:
            return self.answer_mode + (" (strict)" if self.strict and self.answer_mode != "marker" else "")
        rest = [m.replace("phrase", "'answer is'") for m in answers.FALLBACK if m != self.answer_mode]
        return f"{self.answer_mode} (else {', '.join(rest)})"

    def in_format(self, ex: "Example") -> "Example":
        """`ex` with its prompt rendered and its worked solution's answer line in the task's format."""
        if self.template is None and not self._system() and self.answer_mode == type(self).answer_mode == "marker":
            return ex  # the task's own prompt and format: nothing to render
        solution = ex.solution
        if solution is not None and self.answer_mode != "marker":
            head, _, last = solution.rpartition("\n")
            if last.startswith(ANSWER_MARK):
                solution = (head + "\n" if head else "") + self.completion_of(last[len(ANSWER_MARK):])
        return replace(ex, prompt=self.render(ex.prompt), solution=solution)

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

    def extract_answer(self, text: str, question: Optional[str] = None) -> Optional[str]:
        """The answer in the task's format (`answers.extract`; `marker`: after the last `A:`, to the
        end of its line). `question`: the prompt, whose numbers restated are not the answer."""
        return answers.extract(text, self.answer_mode, question, strict=self.strict)

    def verify(self, text: str, reference: str, question: Optional[str] = None) -> bool:
        got = self.extract_answer(text, question)
        return got is not None and _norm(got) == _norm(reference)

    def completion_of(self, answer: str) -> str:
        """A completion whose extracted answer is `answer` (how a majority vote is verified)."""
        return answers.completion_of(answer, self.answer_mode)

    def reward(self, text: str, reference: str, question: Optional[str] = None) -> float:
        return 1.0 if self.verify(text, reference, question) else 0.0


# the format of every task before `task.answer` existed: what a manifest without `prompt_format` means
LEGACY_FORMAT = {"answer": "marker", "strict": False, "system": None, "template": "{question}"}
# TaskConfig fields added with the formats: left out of a trace set's params while unset, so that a
# set made before them continues with the same params
FORMAT_FIELDS = {"prompt": None, "system": None, "answer": None, "strict": False}


def task_params(cfg, task: "Task") -> dict:
    """What identifies a trace set's task (its manifest's params): the `TaskConfig` (the format
    fields only when set) and, unless it is `LEGACY_FORMAT`, the prompt format resolved."""
    import dataclasses

    d = {k: v for k, v in dataclasses.asdict(cfg).items() if not (k in FORMAT_FIELDS and v == FORMAT_FIELDS[k])}
    fmt = task.prompt_format()
    return {"task": d, **({"prompt_format": fmt} if fmt != LEGACY_FORMAT else {})}


def manifest_format(manifest: dict) -> dict:
    """The prompt format a trace set's teacher was prompted with: its params', or a curated set's
    source's (`source_params`, at any depth); `LEGACY_FORMAT` for sets made before formats."""
    params = manifest.get("params") or {}
    while isinstance(params, dict) and params:
        if params.get("prompt_format"):
            return params["prompt_format"]
        params = params.get("source_params")
    return dict(LEGACY_FORMAT)


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

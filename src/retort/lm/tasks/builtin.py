"""Built-in procedural reasoning tasks: seeded, unlimited, verifiable, with worked solutions.

Both families compose several single-digit modular operations. Each operation is a lookup a
tiny model learns quickly, but answering in one shot means composing all of them inside one
forward pass, which a small model cannot do; writing the intermediate results out (the worked
solution) turns the problem into a chain of easy steps. That gap is what distillation transfers.

- `modchain`: apply operations left to right, modulo m: "Q:7+5*3-4" -> "7+5=2 / 2*3=6 / 6-4=2 / A:2".
- `vars`: a chain of variable definitions given in shuffled order; the model must first find the
  dependency order, then evaluate: "Q:c=b+3,a=4,b=a*2;c?" -> "a=4 / b=4*2=8 / c=8+3=1 / A:1".
"""

from __future__ import annotations

import random
import re
from typing import Optional

from ...errors import ConfigError
from .base import Example, Task, in_test_split

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class _Procedural(Task):
    knobs: dict[str, tuple[int, int]] = {}  # name -> (lo, hi) allowed

    def __init__(self, **difficulty):
        for key, value in difficulty.items():
            if key not in self.knobs:
                raise ConfigError(
                    f"task.difficulty.{key}: unknown knob for task '{self.name}'; valid: {', '.join(self.knobs)}"
                )
            lo, hi = self.knobs[key]
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"task.difficulty.{key}={value!r}: expected an integer in [{lo}, {hi}]")
            setattr(self, key, value)
        if self.steps_min > self.steps_max:
            raise ConfigError(f"task.difficulty: steps_min={self.steps_min} > steps_max={self.steps_max}")

    def _problem(self, rng: random.Random, steps: int) -> Example:
        raise NotImplementedError

    def _chain(self, rng: random.Random, steps: int) -> tuple[int, list[tuple[int, str, int, int]]]:
        """A start value and `steps` operations (value before, op, operand, value after), modulo m."""
        m = self.modulus
        start = value = rng.randrange(m)
        chain = []
        for _ in range(steps):
            op, operand = rng.choice("+-*"), rng.randrange(1, m)
            new = OPS[op](value, operand) % m
            chain.append((value, op, operand, new))
            value = new
        return start, chain

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        if split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        want_test = split == "test"
        # Each split has its own stream so that changing n never changes the first examples.
        rng = random.Random(f"{self.name}:{split}:{seed}")
        out, seen = [], set()
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 200 * n + 10_000:
                raise ConfigError(
                    f"task '{self.name}' has too few distinct {split} problems for n={n} at this difficulty"
                )
            steps = rng.randint(self.steps_min, self.steps_max)
            ex = self._problem(rng, steps)
            if in_test_split(ex.prompt) != want_test:
                continue
            if want_test:  # test prompts are unique so that accuracy is not weighted by repeats
                if ex.prompt in seen:
                    continue
                seen.add(ex.prompt)
            out.append(self.in_format(Example(f"{self.name}-{split}-{seed}-{len(out)}", ex.prompt, ex.answer,
                                              ex.solution, steps, ex.messages)))
        return out


class ModChain(_Procedural):
    name = "modchain"
    description = "left-to-right chain of + - * on digits, modulo m; one worked line per operation"
    knobs = {"steps_min": (1, 12), "steps_max": (1, 12), "modulus": (2, 10), "per_line": (1, 4)}
    steps_min, steps_max, modulus = 2, 6, 10
    per_line = 1  # operations per worked line: 2 makes terse solutions ("7+5*3=6 / 6-4=2 / A:2")

    @staticmethod
    def _written(start: int, chain) -> tuple[str, list[str]]:
        """The prompt of a chain and its worked lines, one per operation."""
        prompt = f"Q:{start}" + "".join(f"{op}{x}" for _, op, x, _ in chain) + "\n"
        return prompt, [f"{a}{op}{x}={b}" for a, op, x, b in chain]

    def _problem(self, rng: random.Random, steps: int) -> Example:
        start, chain = self._chain(rng, steps)
        prompt, lines = self._written(start, chain)
        if self.per_line > 1:
            lines = [f"{part[0][0]}" + "".join(f"{op}{x}" for _, op, x, _ in part) + f"={part[-1][3]}"
                     for part in (chain[k:k + self.per_line] for k in range(0, len(chain), self.per_line))]
        answer = str(chain[-1][3])
        return Example("", prompt, answer, "\n".join(lines) + f"\nA:{answer}", steps)


def detour_lines(rng: random.Random, chain, clean: list[str], detour_pct: int, doubt_pct: int, recheck: int,
                 wrong) -> list[str]:
    """The solution lines of `chain` (steps (a, op, x, b), written `clean`) with detours (a wrong
    result, `wrong(rng, b)`, corrected after "wait,"), doubts (a right step repeated after "wait,")
    and the re-check line: the detours rendering of the built-in task and of rg:chain_sum."""
    lines = []
    for (a, op, x, b), line in zip(chain, clean):
        if rng.randrange(100) < detour_pct:
            lines.append(f"{a}{op}{x}={wrong(rng, b)} wait, {line}")
        elif rng.randrange(100) < doubt_pct:
            lines.append(f"{line} wait, {line}")
        else:
            lines.append(line)
    if recheck:
        lines.append("check " + " ".join(clean))
    return lines


class Detours(ModChain):
    """modchain whose worked solutions wander, as long reasoning traces do: a step is first written
    with a wrong result, then "wait," and the correct one (`detour_pct` percent of the steps); a
    right step is doubted and written again after "wait," (`doubt_pct` percent of the others); and
    once the answer is known every step is checked again (`recheck`). The answer is the same as
    modchain's; the detours are what trace-shortening methods (DAP, Retro-Search) should remove:
    "7+5=2 / 2*3=8 wait, 2*3=6 / 6-4=2 wait, 6-4=2 / check 7+5=2 2*3=6 6-4=2 / A:2".

    The built-in teacher of this task also learns to rewrite such a trace (`skill_examples`), the
    way LiteCoT prompts its teacher (DAP, arXiv:2505.19716): given a budget per difficulty level
    it names the level ("D:easy") and writes the longest of the task's renderings of the solution
    that fits that level's budget; given one budget for all ("uniform"), the same without a level.
    The renderings, longest first: the clean steps and the re-check; the clean steps; two
    operations per line; the whole chain on one line; the answer alone."""

    name = "detours"
    description = ("modchain with detours in its worked solutions: wrong steps corrected after 'wait', "
                   "right ones doubted, and a re-check")
    knobs = {**{k: v for k, v in ModChain.knobs.items() if k != "per_line"}, "detour_pct": (0, 100),
             "doubt_pct": (0, 100), "recheck": (0, 1)}
    detour_pct, doubt_pct, recheck = 30, 20, 1
    # Retro-Search's thought switches in these traces (curate --retro-search reads them)
    transitions = ("wait", "check")
    # the prompts the built-in teacher learns (curate --rewrite reads them from the teacher's run)
    rewrite_templates = {"dap": "R:dap e{easy} m{medium} h{hard}\n{question}{trace}\n=\n",
                         "uniform": "R:u{budget}\n{question}{trace}\n=\n"}
    LEVELS = ((2, "easy"), (4, "medium"), (12, "hard"))  # steps up to N -> level

    @classmethod
    def level(cls, steps: int) -> str:
        return next(name for top, name in cls.LEVELS if steps <= top)

    def _detoured(self, rng: random.Random, chain, clean: list[str]) -> list[str]:
        return detour_lines(rng, chain, clean, self.detour_pct, self.doubt_pct, self.recheck,
                            wrong=lambda rng, b: (b + rng.randrange(1, self.modulus)) % self.modulus)

    def _problem(self, rng: random.Random, steps: int) -> Example:
        start, chain = self._chain(rng, steps)
        prompt, clean = self._written(start, chain)
        answer = str(chain[-1][3])
        lines = self._detoured(rng, chain, clean)
        return Example("", prompt, answer, "\n".join(lines) + f"\nA:{answer}", steps)

    def renderings(self, start: int, chain) -> list[str]:
        """The solution written at decreasing length (each ends with the answer line)."""
        m = self.modulus
        _, clean = self._written(start, chain)
        answer = f"A:{chain[-1][3]}"
        pairs = []
        for k in range(0, len(chain), 2):
            part = chain[k:k + 2]
            pairs.append(f"{part[0][0]}" + "".join(f"{op}{x}" for _, op, x, _ in part) + f"={part[-1][3] % m}")
        whole = f"{start}" + "".join(f"{op}{x}" for _, op, x, _ in chain) + f"={chain[-1][3]}"
        out = ["\n".join(clean + ["check " + " ".join(clean), answer]), "\n".join(clean + [answer]),
               "\n".join(pairs + [answer]), f"{whole}\n{answer}", answer]
        seen = []  # one step: "two per line" and "one line" equal the clean steps
        for text in out:
            if text not in seen:
                seen.append(text)
        return seen

    def renderings_for(self, prompt: str) -> list[str]:
        """The renderings of a prompt's solution ("Q:7+5*3-4\\n"), longest first."""
        terms = re.findall(r"[-+*]?\d", prompt.removeprefix("Q:"))
        start = value = int(terms[0])
        chain = []
        for term in terms[1:]:
            new = OPS[term[0]](value, int(term[1:])) % self.modulus
            chain.append((value, term[0], int(term[1:]), new))
            value = new
        return self.renderings(start, chain)

    @staticmethod
    def fitting(renderings: list[str], budget: int) -> str:
        """The longest rendering within `budget` tokens (characters: the built-in tokenizer's), else
        the shortest."""
        return next((r for r in renderings if len(r) <= budget), renderings[-1])

    def skill_examples(self, n: int, seed: int = 0, split: str = "train") -> list[Example]:
        """`n` rewrite prompts with their targets, half DAP (three budgets drawn at random, the
        level named), half uniform (one budget), on problems of `split`."""
        rng = random.Random(f"{self.name}:skills:{split}:{seed}")
        out = []
        while len(out) < n:
            steps = rng.randint(self.steps_min, self.steps_max)
            start, chain = self._chain(rng, steps)
            prompt, clean = self._written(start, chain)
            if in_test_split(prompt) != (split == "test"):
                continue
            trace = "\n".join(self._detoured(rng, chain, clean)) + f"\nA:{chain[-1][3]}"
            versions = self.renderings(start, chain)
            if len(out) % 2 == 0:
                budgets = {lv: rng.randint(3, 60) for lv in ("easy", "medium", "hard")}
                level = self.level(steps)
                text = self.rewrite_templates["dap"].format(question=prompt, trace=trace, **budgets)
                target = f"D:{level}\n" + self.fitting(versions, budgets[level])
            else:
                budget = rng.randint(3, 60)
                text = self.rewrite_templates["uniform"].format(question=prompt, trace=trace, budget=budget)
                target = self.fitting(versions, budget)
            out.append(Example(f"{self.name}-skill-{seed}-{len(out)}", text, str(chain[-1][3]), target, steps))
        return out


class VarChain(_Procedural):
    name = "vars"
    description = "variable definitions in shuffled order, each one operation on another, modulo m"
    knobs = {"steps_min": (1, 10), "steps_max": (1, 10), "modulus": (2, 10)}
    steps_min, steps_max, modulus = 2, 5, 10

    def _problem(self, rng: random.Random, steps: int) -> Example:
        names = rng.sample("abcdefghijklmnopqrstuvwxyz", steps + 1)
        start, chain = self._chain(rng, steps)
        defs = [f"{names[0]}={start}"] + [f"{n}={p}{op}{x}" for p, n, (_, op, x, _) in zip(names, names[1:], chain)]
        lines = [f"{names[0]}={start}"] + [f"{n}={a}{op}{x}={b}" for n, (a, op, x, b) in zip(names[1:], chain)]
        rng.shuffle(defs)
        answer = str(chain[-1][3])
        prompt = f"Q:{','.join(defs)};{names[-1]}?\n"
        return Example("", prompt, answer, "\n".join(lines) + f"\nA:{answer}", steps)


class Programs(ModChain):
    """modchain whose worked solutions are Python programs (program distillation's toy): one
    assignment per operation, then the result printed: "Q:7+5*3\n" -> "x=7\nx=(x+5)%10\nx=(x*3)%10\n
    print(x)". Answers are read by running the program in the sandbox (`tasks.programs`), so the
    built-in teacher trained on this task writes programs, and a student learns them from it."""

    name = "progs"
    description = "modchain answered by a Python program that prints the result (run in the sandbox)"
    knobs = {k: v for k, v in ModChain.knobs.items() if k != "per_line"}
    program = "python"

    def _runner(self):
        if "_run" not in vars(self):
            from .programs import ProgramTask

            self._run = ProgramTask(self)
        return self._run

    def extract_answer(self, text: str, question: Optional[str] = None) -> Optional[str]:
        return self._runner().extract_answer(text, question)

    def verify(self, text: str, reference: str, question: Optional[str] = None) -> bool:
        return self._runner().verify(text, reference, question)

    def prepare(self, texts) -> None:
        self._runner().prepare(texts)

    def check_answer(self, got: str, reference: str) -> bool:
        """Whether a program's printed answer is the reference (`ProgramTask.verify`)."""
        return got.strip() == reference.strip()

    def completion_of(self, answer: str) -> str:
        return f"print({answer!r})"

    def describe_format(self) -> str:
        return self._runner().describe_format()

    def _problem(self, rng: random.Random, steps: int) -> Example:
        start, chain = self._chain(rng, steps)
        prompt, _ = self._written(start, chain)
        lines = [f"x={start}"] + [f"x=(x{op}{x})%{self.modulus}" for _, op, x, _ in chain] + ["print(x)"]
        return Example("", prompt, str(chain[-1][3]), "\n".join(lines), steps)


BUILTIN = {ModChain.name: ModChain, VarChain.name: VarChain, Detours.name: Detours, Programs.name: Programs}


def builtin_task(name: str, difficulty: Optional[dict] = None) -> Task:
    return BUILTIN[name](**(difficulty or {}))

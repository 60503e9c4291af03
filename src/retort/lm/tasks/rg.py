"""Tasks written by others: reasoning-gym's procedural generators (`task.name=rg:NAME`).

reasoning-gym (pip install 'retort[rg]'; Apache-2.0) ships 100+ seeded generators, each with its
own answer checker (`score_answer`); nothing is downloaded. `task.difficulty` holds the generator's
own options (its config dataclass's fields, e.g. `{max_terms: 4, max_digits: 2}` for `chain_sum`);
an unknown option is refused naming the valid ones.

- Splits: one stream of generated problems per (split, seed); a problem belongs to the test split
  when a hash of its question says so (as for the built-in tasks), so train and test never share a
  question whatever the seed or n.
- A finite generator: options that allow fewer distinct problems than asked for (`chain_sum` with
  `max_terms: 2, max_digits: 1` has 200) end the search once the stream stops giving new ones (no
  new problem in as many draws as it took to find the ones seen, and at least `EXHAUSTED_AFTER`);
  the split then holds what was found (`size`, `describe_split` say how many), as a file's does.
- The prompt and the answer: reasoning-gym's own conventions by default: its default system
  prompt (`reasoning_gym.utils.SYSTEM_PROMPTS["default"]`: think step by step, then the answer
  between `<answer>` and `</answer>`), the question as the user turn, and the answer read by the
  library's `extract_answer` (task.answer=tag; without a tag, the fallbacks of `answers`). Another
  `task.answer` drops the system prompt (unless task.system is set) and puts that format's
  instruction before the question (marker: "Answer on a last line A:<answer>.", retort's format
  before this version). The answer read is handed to the generator's own `score_answer` with the
  problem's entry (its reference answer and metadata). `verify` is a full score; `reward` is the
  score itself (some generators give partial credit).
- Worked solutions, for teachers trained on them: generators whose solution retort can write step
  by step (`SOLVERS`: `chain_sum`, left to right, one line per operation, then the answer in the
  task's format); the others have answers only (train the teacher on another source, or distil
  from an API teacher).
- Renderings (`task.difficulty.rendering`, retort's option beside the generator's): `steps` (the
  default, above) or `detours` (`chain_sum`: wrong steps corrected after "wait", right ones
  doubted, a re-check, and the rewrite skills its teacher learns for DAP and Retro-Search, as the
  built-in `detours` task's; `retort.lm.tasks.rg_detours`, knobs `detour_pct`, `doubt_pct`, `recheck`).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Optional

from ...errors import ConfigError
from . import answers, rg_detours
from .base import ANSWER_MARK, Example, Task, in_test_split

PREFIX = "rg:"
# draws without a new problem after which a generator's stream counts as exhausted (at least; and at
# least as many as it took to find the problems seen): a stream of a large space gives new ones on
# nearly every draw, one of a small space stops within a few times its size
EXHAUSTED_AFTER = 1000
# passes over a stream 4x longer each, looking for n problems of a split
PASSES = 6


def _chain_sum(entry) -> Optional[str]:
    """`a + b - c ...` left to right, one line per operation: "57+87=144\\n144+70=214\\nA:214"."""
    parts = entry["metadata"].get("expression", "").split()
    if len(parts) < 3 or len(parts) % 2 == 0:
        return None
    try:
        value = int(parts[0])
        lines = []
        for op, term in zip(parts[1::2], parts[2::2]):
            new = value + int(term) if op == "+" else value - int(term) if op == "-" else None
            if new is None:
                return None
            lines.append(f"{value}{op}{int(term)}={new}")
            value = new
    except ValueError:
        return None
    if str(value) != str(entry["answer"]).strip():
        return None
    return "\n".join(lines + [f"{ANSWER_MARK}{value}"])


# generator -> a function writing the worked solution of an entry (None: it cannot for this one)
SOLVERS = {"chain_sum": _chain_sum}
# generator -> the metadata field that says how hard a problem is (an integer)
DIFFICULTY = {"chain_sum": "num_terms", "basic_arithmetic": "num_terms", "leg_counting": "num_animals"}
# task.difficulty.rendering: the renderings of worked solutions beside the default one line a step,
# and the generators each applies to
RENDERINGS = {"steps": None, "detours": ("chain_sum",)}
# retort's own task options, checked here and never handed to the generator
OWN = ("rendering", *rg_detours.KNOBS)


def _rendering(generator: str, own: dict):
    """The detours renderer `own` (retort's options of the task) asks for, or None for `steps`."""
    name = own.pop("rendering", "steps")
    if not isinstance(name, str) or name not in RENDERINGS or (RENDERINGS[name] is not None
                                                               and generator not in RENDERINGS[name]):
        fits = [r for r, gens in RENDERINGS.items() if gens is None or generator in gens]
        raise ConfigError(f"task.difficulty.rendering={name!r}: expected one of {', '.join(fits)} for {PREFIX}{generator}"
                          + (" (detours: chain_sum only)" if name == "detours" else ""))
    if name == "steps":
        if own:
            raise ConfigError(f"task.difficulty.{min(own)}: an option of the detours rendering; "
                              "add task.difficulty.rendering=detours")
        return None
    for key, value in own.items():
        lo, hi = rg_detours.KNOBS[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(f"task.difficulty.{key}={value!r}: expected an integer in [{lo}, {hi}]")
    return rg_detours.ChainSumDetours(**own)


class ReasoningGymTask(Task):
    answer_mode = "tag"  # reasoning-gym's convention: <answer>...</answer>, asked for by its system prompt

    def __init__(self, generator: str, **options):
        from ...errors import require

        rg = require("reasoning_gym", "rg", f"task.name={PREFIX}{generator}")
        from reasoning_gym.utils import SYSTEM_PROMPTS, extract_answer

        self.default_system, self._rg_extract = SYSTEM_PROMPTS["default"], extract_answer
        from reasoning_gym.factory import DATASETS

        if generator not in DATASETS:
            close = sorted(n for n in DATASETS if generator[:4] in n)[:8]
            raise ConfigError(f"task.name={PREFIX}{generator}: reasoning-gym has no generator {generator!r}"
                              + (f" (close: {', '.join(close)})" if close else "")
                              + "; `retort tasks` lists them")
        _, config_cls = DATASETS[generator]
        fields = {f.name for f in dataclasses.fields(config_cls)} - {"seed", "size"}
        own = {k: options.pop(k) for k in OWN if k in options}
        bad = sorted(set(options) - fields)
        if bad:
            raise ConfigError(f"task.difficulty.{bad[0]}: not an option of reasoning-gym's {generator}; "
                              f"valid: {', '.join(sorted(fields))}; retort's: {', '.join(OWN)}")
        self.detours = _rendering(generator, dict(own))
        try:
            config_cls(**options, seed=0, size=1).validate()
        except (AssertionError, ValueError, TypeError) as e:
            raise ConfigError(f"task.difficulty for {PREFIX}{generator}: {e or 'rejected by the generator'}") from None
        self._rg, self.generator, self.options = rg, generator, dict(options)
        self.name = f"{PREFIX}{generator}"
        self.description = f"reasoning-gym's {generator} ({config_cls.__name__}{self.options or ''})"
        if self.detours is not None:
            knobs = {k: getattr(self.detours, k) for k in rg_detours.KNOBS}
            self.description += ", detours rendering (" + ", ".join(f"{k}={v}" for k, v in knobs.items()) + ")"
            self.transitions = self.detours.transitions
            self.rewrite_templates = self.detours.rewrite_templates
        self._entries: dict[str, dict] = {}  # reference answer -> an entry with it (for score_answer)
        self._by_prompt: dict[str, dict] = {}  # prompt -> its entry (the metadata of this very problem)
        self._scorer = None
        self._drawn: dict = {}  # (split, n, seed) -> the examples of the last search
        # split -> (distinct problems of it found, distinct problems in all or None, draws): a
        # search that ended with fewer than it asked for
        self._found: dict[str, tuple] = {}

    def configure(self, prompt: Optional[str] = None, system: Optional[str] = None, answer: Optional[str] = None,
                  strict: bool = False) -> "ReasoningGymTask":
        """As `Task.configure`; the detours rendering is written in retort's answer format (its
        solutions, rewrite skills and re-checks end on an `A:` line), so it takes task.answer=marker
        by default and refuses another."""
        if self.detours is not None:
            if answer not in (None, "marker"):
                raise ConfigError(f"task.answer={answer}: task.difficulty.rendering=detours writes its solutions and "
                                  "rewrite skills in retort's answer format; use task.answer=marker (its default)")
            answer = "marker"
        return super().configure(prompt, system, answer, strict)

    def _dataset(self, seed: int, size: int):
        return self._rg.create_dataset(self.generator, seed=seed, size=size, **self.options)

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        if split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        key = (split, n, seed)
        if key not in self._drawn:
            self._drawn = {key: self._search(split, n, seed)}  # the last search only: count() then examples()
        return list(self._drawn[key])

    def _search(self, split: str, n: int, seed: int) -> list[Example]:
        """The first n distinct problems of `split` in the (split, seed) stream, or all the stream
        gives when it runs dry first (then recorded in `self._found[split]`)."""
        want_test = split == "test"
        stream_seed = random.Random(f"{self.name}:{split}:{seed}").randrange(2**31)
        out, size = [], max(64, 2 * n * (10 if want_test else 1))
        for _ in range(PASSES):  # enlarge the stream until n problems of this split are found
            try:
                ds = self._dataset(stream_seed, size)
            except (AssertionError, ValueError) as e:  # a generator with a cap on its size (word_ladder)
                if not out:
                    raise ConfigError(f"task.name={self.name}: reasoning-gym's {self.generator} refuses a stream of "
                                      f"{size} problems ({e or 'rejected by the generator'}); ask for fewer "
                                      "(eval.n, n_prompts, data.n_train)") from None
                break
            self._scorer = ds
            out, seen, quiet = [], set(), 0  # seen: every distinct question, of either split
            for i in range(len(ds)):
                if quiet >= max(i - quiet, EXHAUSTED_AFTER):  # none new in as many draws as found the rest
                    self._found[split] = (len(out), len(seen), quiet)
                    return out
                entry = ds[i]
                q = entry["question"]
                if q in seen:
                    quiet += 1
                    continue
                seen.add(q)
                quiet = 0
                if in_test_split(q) != want_test:
                    continue
                out.append(self._example(entry, f"{self.name}-{split}-{seed}-{i}"))
                if len(out) == n:
                    return out
            size *= 4
        self._found[split] = (len(out), None, size // 4)
        return out

    def size(self, split: str) -> Optional[int]:
        """None (a procedural task) unless a search found fewer distinct problems than it asked for."""
        found = self._found.get(split)
        return found[0] if found else None

    def count(self, split: str, n: int, seed: int = 0) -> int:
        return len(self.examples(split, n, seed))

    def describe_split(self, split: str) -> str:
        opts = f" ({', '.join(f'{k}={v}' for k, v in self.options.items())})" if self.options else ""
        where = f"the {split} split of {self.name}{opts}"
        found = self._found.get(split)
        if found is None:
            return where
        k, total, draws = found
        if total is None:  # PASSES enlargements, and neither n problems nor the end of the stream
            return f"{where}, of which {draws:,} draws of its generator gave {k} distinct problems"
        return (f"{where}, which holds {k} distinct problems (its options allow {total} in all, both splits: "
                f"the generator's stream gave no new one in its last {draws:,} draws)")

    def default_template(self) -> str:
        # another format than the system prompt's: its instruction first and the question last, next
        # to where the answer starts (a small model reads the operands from the end of the prompt)
        return "{question}" if self.answer_mode == "tag" else "{format}\n{question}\n"

    def _example(self, entry, id_: str) -> Example:
        answer = str(entry["answer"])
        self._entries[answer] = entry
        solver = SOLVERS.get(self.generator)
        key = DIFFICULTY.get(self.generator)
        difficulty = entry["metadata"].get(key) if key else None
        solution = solver(entry) if solver else None
        if solution is not None and self.detours is not None:
            _, chain = rg_detours.chain_of(entry["metadata"]["expression"])
            # seeded by the example, so a question repeated in a stream is written its own way each time
            solution = self.detours.detoured(random.Random(f"{self.name}:detours:{id_}"), chain)
        ex = self.in_format(Example(id=id_, prompt=entry["question"].strip(), answer=answer, solution=solution,
                                    difficulty=difficulty if isinstance(difficulty, int) else None))
        self._by_prompt[str(ex.prompt)] = entry
        return ex

    def skill_examples(self, n: int, seed: int = 0, split: str = "train") -> list[Example]:
        """With the detours rendering: `n` rewrite prompts with their targets, half DAP, half uniform,
        on problems of `split` (`rg_detours`); none otherwise."""
        if self.detours is None or n <= 0:
            return []
        rng = random.Random(f"{self.name}:skills:{split}:{seed}")
        ds = self._dataset(rng.randrange(2**31), max(64, 2 * n * (10 if split == "test" else 1)))
        out = []
        for i in range(len(ds)):
            entry = ds[i]
            parsed = rg_detours.chain_of(entry["metadata"].get("expression", ""))
            if parsed is None or in_test_split(entry["question"]) != (split == "test"):
                continue
            start, chain = parsed
            text, target = self.detours.skill(rng, str(self.render(entry["question"].strip())), start, chain, dap=len(out) % 2 == 0)
            out.append(Example(f"{self.name}-skill-{seed}-{len(out)}", text, str(chain[-1][3]), target,
                               len(chain) + 1))
            if len(out) == n:
                break
        return out

    @staticmethod
    def fitting(renderings: list[str], budget: int) -> str:
        """The longest rendering within `budget` characters, else the shortest (detours rendering)."""
        return rg_detours.ChainSumDetours.fitting(renderings, budget)

    def level(self, terms: int) -> str:
        """The DAP level of a problem of `terms` terms (detours rendering)."""
        return rg_detours.level(terms)

    def renderings_for(self, prompt: str) -> list[str]:
        """The renderings of a prompt's solution, longest first (detours rendering; the rewrite rule
        its teacher learned): the expression is the prompt's last line, after its last colon."""
        expression = prompt.strip().rsplit("\n", 1)[-1].rsplit(":", 1)[-1].rstrip("= ")
        start, chain = rg_detours.chain_of(expression)
        return self.detours.renderings(start, chain)

    def extract_answer(self, text: str, question: Optional[str] = None) -> Optional[str]:
        """tag: reasoning-gym's own `extract_answer` (the last <answer>...</answer>), then the
        fallbacks of `answers.extract`; another format: `answers.extract`."""
        if self.answer_mode == "tag":
            got = self._rg_extract(text)
            if got:
                return got
        return answers.extract(text, self.answer_mode, question, strict=self.strict)

    def score(self, text: str, reference: str, question: Optional[str] = None) -> float:
        """The generator's own score of the answer in `text` against `reference` (0 to 1)."""
        got = self.extract_answer(text, question)
        if got is None:
            return 0.0
        if self._scorer is None:
            self._scorer = self._dataset(0, 1)
        entry = (self._by_prompt.get(str(question)) if question is not None else None) or \
            self._entries.get(reference) or {"question": "", "answer": reference, "metadata": {}}
        if str(entry["answer"]) != str(reference):
            entry = {"question": "", "answer": reference, "metadata": {}}
        try:
            return float(self._scorer.score_answer(answer=got, entry=entry))
        except Exception:  # a checker that needs metadata this entry lacks, or fails on odd text
            return 0.0

    def verify(self, text: str, reference: str, question: Optional[str] = None) -> bool:
        return self.score(text, reference, question) >= 1.0

    def reward(self, text: str, reference: str, question: Optional[str] = None) -> float:
        return self.score(text, reference, question)


def generators() -> list[str]:
    """reasoning-gym's generator names ([] when it is not installed)."""
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError:
        return []
    return sorted(DATASETS)


__all__ = ["PREFIX", "ReasoningGymTask", "SOLVERS", "generators"]

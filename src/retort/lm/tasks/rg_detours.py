"""The `detours` rendering of reasoning-gym's `chain_sum` (`task.difficulty.rendering=detours`): its
worked solutions wander the way the built-in `detours` task's do, and its teacher learns the same
rewrite skills, so DAP rewrites and Retro-Search revisions (`retort curate`) can be measured on a
task retort did not write.

- A step is first written with a wrong result (off by 1-9), then "wait," and the right one
  (`detour_pct` percent of the steps); a right step is doubted and written again after "wait,"
  (`doubt_pct` percent of the others); once the answer is known every step is checked again
  (`recheck`): "4-1=3\\n3-7=-2 wait, 3-7=-4\\ncheck 4-1=3 3-7=-4\\nA:-4".
- The rewrite skills (`skill_examples`), as the built-in teacher's (`retort.lm.tasks.builtin.Detours`):
  given a budget per level (DAP) it names the problem's level and writes the longest rendering of the
  solution within that level's budget; given one budget ("uniform"), the same without a level. The
  renderings, longest first: the clean steps and the re-check; the clean steps; two operations per
  line; the whole chain on one line; the answer alone. Levels follow the number of terms: up to 3
  easy, 4 medium, 5 and more hard.

Lengths are counted in characters: the built-in tokenizer's tokens.
"""

from __future__ import annotations

import random
from typing import Optional

from .base import ANSWER_MARK
from .builtin import Detours, detour_lines

# the rendering's options (task.difficulty) -> (lo, hi), beside the generator's own
KNOBS = {"detour_pct": (0, 100), "doubt_pct": (0, 100), "recheck": (0, 1)}
DEFAULTS = {"detour_pct": Detours.detour_pct, "doubt_pct": Detours.doubt_pct, "recheck": Detours.recheck}
LEVELS = ((3, "easy"), (4, "medium"), (10**9, "hard"))  # terms up to N -> level

Chain = list[tuple[int, str, int, int]]  # (value before, op, term, value after), left to right


def chain_of(expression: str) -> Optional[tuple[int, Chain]]:
    """The start and the steps of a `chain_sum` expression ("4 - 1 - 7"), None when it is not one."""
    parts = expression.split()
    if len(parts) < 3 or len(parts) % 2 == 0 or any(op not in "+-" for op in parts[1::2]):
        return None
    try:
        start = value = int(parts[0])
        chain = []
        for op, term in zip(parts[1::2], parts[2::2]):
            new = value + int(term) if op == "+" else value - int(term)
            chain.append((value, op, int(term), new))
            value = new
    except ValueError:
        return None
    return start, chain


def level(terms: int) -> str:
    return next(name for top, name in LEVELS if terms <= top)


class ChainSumDetours:
    """Writes a chain's detoured solution and its renderings (module docstring)."""

    transitions = Detours.transitions
    rewrite_templates = Detours.rewrite_templates
    fitting = staticmethod(Detours.fitting)

    def __init__(self, detour_pct: int = DEFAULTS["detour_pct"], doubt_pct: int = DEFAULTS["doubt_pct"],
                 recheck: int = DEFAULTS["recheck"]):
        self.detour_pct, self.doubt_pct, self.recheck = detour_pct, doubt_pct, recheck

    @staticmethod
    def clean(chain: Chain) -> list[str]:
        return [f"{a}{op}{x}={b}" for a, op, x, b in chain]

    def detoured(self, rng: random.Random, chain: Chain) -> str:
        """The solution with detours, doubts and the re-check, ending with the answer line."""
        lines = detour_lines(rng, chain, self.clean(chain), self.detour_pct, self.doubt_pct, self.recheck,
                             wrong=lambda rng, b: b + rng.randint(1, 9) * rng.choice((-1, 1)))
        return "\n".join(lines + [f"{ANSWER_MARK}{chain[-1][3]}"])

    def renderings(self, start: int, chain: Chain) -> list[str]:
        """The solution written at decreasing length (each ends with the answer line)."""
        clean = self.clean(chain)
        answer = f"{ANSWER_MARK}{chain[-1][3]}"
        pairs = [f"{part[0][0]}" + "".join(f"{op}{x}" for _, op, x, _ in part) + f"={part[-1][3]}"
                 for part in (chain[k:k + 2] for k in range(0, len(chain), 2))]
        whole = f"{start}" + "".join(f"{op}{x}" for _, op, x, _ in chain) + f"={chain[-1][3]}"
        out = ["\n".join(clean + ["check " + " ".join(clean), answer]), "\n".join(clean + [answer]),
               "\n".join(pairs + [answer]), f"{whole}\n{answer}", answer]
        return list(dict.fromkeys(out))  # one step: "two per line" and "one line" equal the clean steps

    def skill(self, rng: random.Random, prompt: str, start: int, chain: Chain, dap: bool) -> tuple[str, str]:
        """One rewrite prompt (DAP: three budgets drawn at random; else one) and its target."""
        trace = self.detoured(rng, chain)
        versions = self.renderings(start, chain)
        if dap:
            budgets = {lv: rng.randint(3, 60) for lv in ("easy", "medium", "hard")}
            lv = level(len(chain) + 1)
            text = self.rewrite_templates["dap"].format(question=prompt, trace=trace, **budgets)
            return text, f"D:{lv}\n" + self.fitting(versions, budgets[lv])
        budget = rng.randint(3, 60)
        text = self.rewrite_templates["uniform"].format(question=prompt, trace=trace, budget=budget)
        return text, self.fitting(versions, budget)

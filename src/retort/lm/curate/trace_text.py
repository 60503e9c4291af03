"""The text rules of shortening traces, free of models (known-answer tested): the rewrite prompts
(DAP / LiteCoT's budget per difficulty level, and the uniform control) and how their replies are
read; a trace as steps (`steps`, `step_sep`) and its thought switches (`switch_points`, the
`TRANSITIONS` words Retro-Search revises at); Retro-Search's value of a way to the answer; and the
plain cut at a step boundary (`cut_to`) that shortening is compared with."""

from __future__ import annotations

import re

from ...errors import DataError

LEVELS = ("easy", "medium", "hard")
DEFAULT_BUDGETS = {"easy": 300, "medium": 700, "hard": 1500}  # tokens (retort's defaults; the paper fixes none)
DAP_TEMPLATE = """Below are a problem and a long solution to it. First judge how difficult the problem is: easy, \
medium or hard. Then rewrite the solution so that it is concise but complete, within the token budget of that \
difficulty (easy: {easy} tokens, medium: {medium} tokens, hard: {hard} tokens). Keep every step the answer needs \
and the check of the final answer; drop repetitions, dead ends and second-guessing; keep the final answer and the \
way it is written exactly as they are.

Reply in this form and with nothing else:
Difficulty: <easy, medium or hard>
<the rewritten solution>

Problem:
{question}

Long solution:
{trace}"""
UNIFORM_TEMPLATE = """Below are a problem and a long solution to it. Rewrite the solution so that it is concise \
but complete, within {budget} tokens. Keep every step the answer needs and the check of the final answer; drop \
repetitions, dead ends and second-guessing; keep the final answer and the way it is written exactly as they are.

Reply with the rewritten solution and nothing else.

Problem:
{question}

Long solution:
{trace}"""
# words that open a new thought in long reasoning traces (Retro-Search's switch points)
TRANSITIONS = ("Wait", "But wait", "Alternatively", "Hmm", "Let me double-check", "Let me check", "Let me verify",
               "On second thought")
_LEVEL = re.compile(r"^\s*(?:difficulty|d)\s*:\s*\**\s*(easy|medium|hard)\b\**[ \t]*\n?", re.IGNORECASE)


def parse_budgets(spec: str) -> dict:
    """"easy=300,medium=700,hard=1500" -> {"easy": 300, ...}; every level, positive integers."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in LEVELS or not value.strip().isdigit() or int(value) < 1:
            raise DataError(f"curate --budgets: expected easy=N,medium=N,hard=N with N >= 1 tokens, got {part!r}")
        out[key] = int(value)
    missing = [lv for lv in LEVELS if lv not in out]
    if missing:
        raise DataError(f"curate --budgets: no budget for {', '.join(missing)} (expected easy=N,medium=N,hard=N)")
    return out


def parse_rewrite(text: str, mode: str) -> tuple[str | None, str]:
    """(level, rewrite) of a reply: DAP's reply opens with its level ("Difficulty: hard" or
    "D:hard"); a uniform reply may, and the line is dropped."""
    m = _LEVEL.match(text)
    if m is None:
        return None, text.strip()
    return m.group(1).lower(), text[m.end():].strip()


def switch_points(text: str, keywords) -> list[int]:
    """Offsets where a keyword opens a new thought: the keyword as a whole word, after something."""
    if not keywords:
        return []
    alts = "|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True))
    return [m.start() for m in re.finditer(rf"(?<!\w)(?:{alts})(?!\w)", text) if text[:m.start()].strip()]


def steps(text: str, sep: str) -> list[str]:
    return [s for s in text.split(sep) if s.strip()]


def step_sep(texts) -> str:
    """Blank lines separate steps in a set whose traces have them (an LLM's), else lines."""
    return "\n\n" if any("\n\n" in t for t in texts) else "\n"


def opens_with_switch(rollout: str, sep: str, keywords) -> bool:
    """Whether the first step of a continuation holds a keyword (Retro-Search suppresses them there)."""
    first = next((s for s in rollout.split(sep) if s.strip()), "")
    return bool(switch_points("." + first, keywords))


def value(n_steps: int, correct: bool, gamma: float) -> float:
    """Retro-Search's value of a way to the answer: gamma^N when it reaches the right answer, else 0."""
    return gamma ** n_steps if correct else 0.0


def cut_to(text: str, budget: int, count, sep: str) -> str:
    """`text` cut at a step boundary to at most `budget` tokens (`count(text)`), the answer step
    (the last) kept: the steps before it are kept from the start while they fit."""
    parts = steps(text, sep)
    if len(parts) < 2 or count(text) <= budget:
        return text
    answer = parts[-1].strip("\n")
    kept: list[str] = []
    for part in parts[:-1]:
        trial = sep.join([p.strip("\n") for p in kept + [part]] + [answer])
        if count(trial) > budget:
            break
        kept.append(part)
    return sep.join([p.strip("\n") for p in kept] + [answer])


__all__ = ["DAP_TEMPLATE", "DEFAULT_BUDGETS", "LEVELS", "TRANSITIONS", "UNIFORM_TEMPLATE", "cut_to", "opens_with_switch",
           "parse_budgets", "parse_rewrite", "step_sep", "steps", "switch_points", "value"]

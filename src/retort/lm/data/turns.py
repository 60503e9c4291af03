"""MinD's turn format (Multi-Turn Decomposition, Zeng et al. 2025, arXiv:2505.19788, spec §18): an
answer written as K turns, each a thinking unit followed by the answer that unit reached,

    <think>
    u_1
    </think>
    a_1
    <think>
    u_2
    </think>
    a_2 ...

with every a_k in the task's answer format (`A:8`, `\\boxed{8}`, ...); the last, a_K, is the final
answer, which the task's verifier reads as it reads any answer (it takes the last one). The turns
live in one assistant answer, as the paper writes them: a student samples the whole answer at once
(grpo), and a chat template's end of turn after each unit would end its rollout at the first.

This module owns the text rules, free of models: `render_turns` / `parse_turns` (a round trip), the
turn-count reward of the spec's RL stage (`mind_reward`), and the eval metrics (`turn_stats`).
"""

from __future__ import annotations

import re

OPEN, CLOSE = "<think>", "</think>"
_TURN = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE) + r"(.*?)(?=" + re.escape(OPEN) + r"|\Z)", re.DOTALL)


def render_turns(units: list[str], answers: list[str]) -> str:
    """The turn-format text of `units` and their `answers` (the answers' text as the task writes
    them, e.g. `A:8`): one turn per unit, in order."""
    if len(units) != len(answers) or not units:
        raise ValueError(f"render_turns: {len(units)} units and {len(answers)} answers (need as many, at least one)")
    return "\n".join(f"{OPEN}\n{u.strip()}\n{CLOSE}\n{a.strip()}" for u, a in zip(units, answers))


def parse_turns(text: str) -> list[tuple[str, str]] | None:
    """[(unit, answer text), ...] of a turn-format text, or None when it is malformed: text before
    the first turn, no turn, a unit left open or holding another `<think>`, a stray `</think>`, or a
    turn without an answer after its unit."""
    body = text.strip()
    if not body.startswith(OPEN):
        return None
    turns, end = [], 0
    for m in _TURN.finditer(body):
        if m.start() != end:
            return None
        unit, answer = m.group(1), m.group(2)
        if OPEN in unit or CLOSE in answer or not answer.strip():
            return None
        turns.append((unit.strip(), answer.strip()))
        end = m.end()
    return turns if turns and end == len(body) else None


def read_turns(text: str, task, prompt=None) -> list[tuple[str, str]] | None:
    """`parse_turns`, and None too when a turn's answer is not one the task can read."""
    turns = parse_turns(text)
    if turns is None or any(task.extract_answer(a, prompt) is None for _, a in turns):
        return None
    return turns


def mind_reward(text: str, reference: str, prompt, task, *, eta: float = 0.5, k_max: int = 8) -> float:
    """The spec's proposed RL reward (§18.2, [I]):

        r = c(a_K) * (1 + eta * (1 - min(K, k_max) / k_max))     for a well-formed answer of K turns
        r = -1                                                    for a malformed one (`read_turns`)

    c(a_K) is the task's reward of the final answer (1/0, or reasoning-gym's partial credit). A
    correct answer in fewer turns earns more; K is capped at `k_max`, so a correct answer never
    earns less than a wrong one. A malformed answer gets no credit for its answer (its a_K is not
    defined): the order is correct in 1 turn > correct in 3 > wrong > malformed."""
    turns = read_turns(text, task, prompt)
    if turns is None:
        return -1.0
    k = len(turns)
    score = float(task.reward(turns[-1][1], reference, prompt))
    return score * (1.0 + eta * (1.0 - min(k, k_max) / k_max))


def turn_stats(text: str, count) -> dict:
    """An answer's turns (0 when it is not in the turn format), and its tokens before its first
    intermediate answer (`count(text)`: up to the end of the first `</think>`; the whole answer when
    it has none): MinD's time to first answer."""
    turns = parse_turns(text)
    cut = text.find(CLOSE)
    return {"turns": len(turns) if turns else 0, "well_formed": turns is not None,
            "first_answer_tokens": count(text[:cut + len(CLOSE)] if cut >= 0 else text)}


__all__ = ["CLOSE", "OPEN", "mind_reward", "parse_turns", "read_turns", "render_turns", "turn_stats"]

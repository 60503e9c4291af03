"""Positive/negative pairs from verified traces (REDI, DPO, SimPO).

Rule (deterministic, no sampling): for each prompt that has both correct and incorrect samples,
take its correct samples and its incorrect samples, each in sample order, and pair them off in
that order — the first correct with the first incorrect, the second with the second, ... — up to
`per_prompt` pairs (0: as many as the shorter list). So every trace is in at most one pair, and a
prompt with c correct and w incorrect samples gives min(c, w, per_prompt) pairs. Prompts with only
correct or only incorrect samples give none: REDI's D_Pref is "D_SFT problems that also have an
incorrect trace", one negative per positive.
"""

from __future__ import annotations


def pair_rows(prompt_ids: list[str], sample_idx: list[int], correct: list[bool], per_prompt: int = 1
              ) -> list[tuple[int, int]]:
    """(row of the chosen = correct trace, row of the rejected = incorrect trace) pairs."""
    if per_prompt < 0:
        raise ValueError(f"per_prompt must be >= 0, got {per_prompt}")
    by_prompt: dict[str, tuple[list, list]] = {}
    for row, (pid, idx, ok) in enumerate(zip(prompt_ids, sample_idx, correct)):
        by_prompt.setdefault(pid, ([], []))[0 if ok else 1].append((idx, row))
    pairs = []
    for good, bad in by_prompt.values():
        good, bad = [r for _, r in sorted(good)], [r for _, r in sorted(bad)]
        n = min(len(good), len(bad))
        pairs += list(zip(good, bad))[:per_prompt or n]
    return pairs

"""Metrics over sampled completions: unbiased pass@k, maj@k."""

from __future__ import annotations

from collections import Counter
from math import comb
from typing import Optional


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, arXiv:2107.03374, eq. 1):
    1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority(answers: list[Optional[str]]) -> Optional[str]:
    """Most frequent extracted answer (ties: the one seen first); None if no answer was extracted."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == best)

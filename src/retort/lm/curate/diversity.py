"""Two selections over a trace set's texts (no model needed):

- **Template removal** (AM, "Not all correct answers are equal"):
  drop every trace that contains a word n-gram (default 20 words) found in more than `max_count`
  traces (default 20): boilerplate a teacher repeats across answers. Counted once per trace (a
  loop inside one answer is not a template).
- **Diverse correct trajectories** (DED, section 3.2 step 3): per prompt, among its correct traces,
  the `k` that differ most: greedily, the longest first, then each time the trace whose smallest
  dissimilarity to those already chosen is largest; dissimilarity = 1 - ROUGE-L F1 over words
  (retort's measure; an LCS of words, so order matters and paraphrase does not count).
"""

from __future__ import annotations

from collections import Counter


def ngrams(words: list[str], n: int) -> set[tuple]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def template_rows(texts: list[str], n: int = 20, max_count: int = 20) -> tuple[set[int], int]:
    """Rows holding an n-gram that more than `max_count` rows hold; and how many such n-grams."""
    grams = [ngrams(t.split(), n) for t in texts]
    df = Counter(g for gs in grams for g in gs)
    frequent = {g for g, c in df.items() if c > max_count}
    return {i for i, gs in enumerate(grams) if gs & frequent}, len(frequent)


def lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two word lists (one row of the table at a time)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 of two word lists (1 for identical, 0 for nothing in common)."""
    if not a or not b:
        return float(a == b)
    m = lcs(a, b)
    return 0.0 if m == 0 else 2 * m / (len(a) + len(b))


def most_diverse(texts: list[str], k: int) -> list[int]:
    """Indices of `k` of `texts` chosen for the largest pairwise dissimilarity (greedy max-min,
    starting from the longest; ties go to the earlier text)."""
    words = [t.split() for t in texts]
    if len(texts) <= k:
        return list(range(len(texts)))
    chosen = [max(range(len(texts)), key=lambda i: (len(words[i]), -i))]
    closest = [1.0 - rouge_l(words[i], words[chosen[0]]) for i in range(len(texts))]
    while len(chosen) < k:
        best = max((i for i in range(len(texts)) if i not in chosen), key=lambda i: (closest[i], -i))
        chosen.append(best)
        for i in range(len(texts)):
            closest[i] = min(closest[i], 1.0 - rouge_l(words[i], words[best]))
    return sorted(chosen)


__all__ = ["lcs", "most_diverse", "ngrams", "rouge_l", "template_rows"]

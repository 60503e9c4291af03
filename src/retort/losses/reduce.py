"""Masking and normalisation, in one place.

Losses are summed over valid positions per micro-batch and divided by the number of valid tokens
across all accumulation steps and processes (the training loop knows that count; see
`retort.train.loop`). An all-masked batch sums to 0, never NaN.
"""

from __future__ import annotations

import torch

IGNORE = -100  # the label of positions no loss is taken at (prompt, padding): the one definition


def masked_sum(per_token: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> tuple[torch.Tensor, int]:
    """(sum of per_token over positions whose label is not ignore_index, number of such positions)."""
    mask = labels != ignore_index
    # where() rather than multiply: a NaN/inf at a masked position must not leak into the sum
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum()
    return total, int(mask.sum())


def normalised(total: torch.Tensor, count: int) -> torch.Tensor:
    """total / count, and 0 (with gradient) when count is 0."""
    return total / count if count > 0 else total * 0.0

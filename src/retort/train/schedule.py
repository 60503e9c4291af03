"""Learning-rate schedules: linear warmup, then cosine decay to `min_lr_ratio * lr` or step decay."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def multistep(step: int, *, warmup: int, milestones, gamma: float) -> float:
    """Multiplier at optimizer step `step` (0-based): linear warmup, then gamma^(milestones passed)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return gamma ** sum(1 for m in milestones if step >= m)

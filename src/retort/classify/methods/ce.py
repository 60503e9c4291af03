"""`ce`: the student trained on the labels alone (no teacher), the baseline every table starts from."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ...contract import LossOut
from .base import ClassifyMethod


class CE(ClassifyMethod):
    name = "ce"
    paper = "the baseline: cross-entropy on the labels, no teacher"
    equation = "L = -log p_S(y|x)"
    uses_teacher = False

    @dataclass
    class Config:
        pass

    def loss(self, model, batch) -> LossOut:
        logits = model(batch["x"])
        loss = F.cross_entropy(logits.float(), batch["y"], reduction="sum")
        return LossOut(loss, len(batch["y"]), {"ce": float(loss.detach()) / len(batch["y"])})

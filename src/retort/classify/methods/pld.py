"""`pld`: Plackett-Luce distillation, the teacher's ranking (true label first) as a weighted list loss."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import param
from ...contract import LossOut
from ...losses.classify import PL_WEIGHTS, plackett_luce
from .base import ClassifyMethod


class PLD(ClassifyMethod):
    name = "pld"
    paper = "Knowledge Distillation via the Plackett-Luce Model (Bassam, Zhu, Bian; NeurIPS 2025, arXiv 2506.12542)"
    equation = ("L = sum_k alpha_k (log sum_{l>=k} exp s_{pi*_l} - s_{pi*_k}),  pi* = (y, rest by teacher logit), "
                "alpha_k = softmax(t / T)[pi*_k]   (section 4; used alone: its first term is CE)")

    @dataclass
    class Config:
        temperature: float = param(1.0, "teacher temperature of the weights (paper's ImageNet best: 1)", lo=0.0,
                                   lo_open=True)
        weights: str = param("teacher", "alpha: teacher (PLD), uniform (PLD-ListMLE), ce (only the first term: "
                             "cross-entropy)", choices=list(PL_WEIGHTS))

    def loss(self, model, batch) -> LossOut:
        logits = model(batch["x"]).float()
        n = len(batch["y"])
        loss = plackett_luce(logits, batch["teacher_logits"], batch["y"], temperature=self.cfg.temperature,
                             weights=self.cfg.weights).sum()
        return LossOut(loss, n, {"pld": float(loss.detach()) / n})

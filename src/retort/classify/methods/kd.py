"""`kd`: Hinton's knowledge distillation for classifiers, soft targets at temperature T plus the labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ...config import param
from ...contract import LossOut
from ...losses.classify import hinton_kd
from .base import ClassifyMethod


class KD(ClassifyMethod):
    name = "kd"
    paper = "Distilling the Knowledge in a Neural Network (Hinton, Vinyals, Dean 2015, arXiv 1503.02531)"
    equation = "L = ce_weight * CE(y, p_S) + kd_weight * T^2 KL(p_T^T || p_S^T)   (p^T = softmax(z / T))"

    @dataclass
    class Config:
        temperature: float = param(4.0, "T: both logits divided by it in the KD term (mdistiller's CIFAR config: 4)",
                                   lo=0.0, lo_open=True)
        ce_weight: float = param(0.1, "weight of the label cross-entropy (mdistiller's CIFAR config: 0.1)", lo=0.0)
        kd_weight: float = param(0.9, "weight of the T^2-scaled KL to the teacher (mdistiller: 0.9)", lo=0.0)

    def loss(self, model, batch) -> LossOut:
        logits = model(batch["x"]).float()
        ce = F.cross_entropy(logits, batch["y"], reduction="sum")
        kd = hinton_kd(logits, batch["teacher_logits"], temperature=self.cfg.temperature).sum()
        n = len(batch["y"])
        return LossOut(self.cfg.ce_weight * ce + self.cfg.kd_weight * kd, n,
                       {"ce": float(ce.detach()) / n, "kd": float(kd.detach()) / n})

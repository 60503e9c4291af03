"""`dkd`: decoupled knowledge distillation, KD split into its target-class and non-target parts."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ...config import param
from ...contract import LossOut
from ...losses.classify import dkd
from .base import ClassifyMethod


class DKD(ClassifyMethod):
    name = "dkd"
    paper = "Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang; CVPR 2022, arXiv 2203.08679)"
    equation = ("L = ce_weight * CE + min(step / warmup, 1) * T^2 (alpha * TCKD + beta * NCKD)   (eq. 7; the "
                "linear warm-up of the DKD term is the authors' mdistiller code)")

    @dataclass
    class Config:
        alpha: float = param(1.0, "weight of TCKD, the binary target-vs-rest KL (paper: 1)", lo=0.0)
        beta: float = param(8.0, "weight of NCKD, the KL among non-target classes (paper's CIFAR-100: 8; "
                            "2 for some pairs)", lo=0.0)
        temperature: float = param(4.0, "T of both parts (paper: 4)", lo=0.0, lo_open=True)
        ce_weight: float = param(1.0, "weight of the label cross-entropy (mdistiller: 1)", lo=0.0)
        warmup: float = param(20 / 240, "share of the run over which the DKD term ramps up linearly (mdistiller: "
                              "20 of 240 epochs)", lo=0.0, hi=1.0)

    def loss(self, model, batch) -> LossOut:
        logits = model(batch["x"]).float()
        n = len(batch["y"])
        ce = F.cross_entropy(logits, batch["y"], reduction="sum")
        ramp_steps = self.cfg.warmup * self.ctx.run.train.steps
        ramp = min((self.step + 1) / ramp_steps, 1.0) if ramp_steps > 0 else 1.0
        d = dkd(logits, batch["teacher_logits"], batch["y"], alpha=self.cfg.alpha, beta=self.cfg.beta,
                temperature=self.cfg.temperature).sum()
        return LossOut(self.cfg.ce_weight * ce + ramp * d, n,
                       {"ce": float(ce.detach()) / n, "dkd": float(d.detach()) / n, "ramp": ramp})

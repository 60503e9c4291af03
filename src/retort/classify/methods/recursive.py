"""`recursive`: anchored recursive distillation, each generation pulled back toward the base teacher.

"Recursive Meta-Distillation" (Flouro & Chadwick, arXiv 2601.13100) models multi-generation
distillation as operators on distributions anchored to the base teacher; under its axioms the
anchored recursion contracts in KL to a unique fixed point. The paper gives no algorithm; retort
implements one instantiation of its operators (a reading, not the paper's equations):

    p_{k+1} = (1 - a) Distill(p_k) + a p_T

`anchored_chain` runs it on distributions (the operator-level checks: with a lossy Distill the
unanchored chain, a = 0, drifts to Distill's own fixed point, uniform for temperature smoothing,
while a > 0 converges geometrically, at a rate <= (1 - a) Lip, to a limit that does not depend on
p_0 and moves toward p_T as a grows). The neural method trains generation k+1 on the soft target
(1 - a) softmax(f_k) + a softmax(f_T) with the forward KL; `retort generations` runs the chain
(teacher = the previous generation, `method_args.anchor` = the base teacher).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ...config import param
from ...contract import LossOut
from ...errors import ConfigError
from ...losses.classify import soft_target_kl
from .base import ClassifyMethod


def temperature_smoothing(tau: float) -> Callable[[np.ndarray], np.ndarray]:
    """The lossy Distill of the spec's check: p -> softmax(log p / tau)."""
    def distill(p: np.ndarray) -> np.ndarray:
        z = np.log(p) / tau
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)
    return distill


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(q)), 0.0)))


def anchored_chain(p_T: np.ndarray, distill: Callable, a: float, steps: int, p0: Optional[np.ndarray] = None):
    """p_0 (default p_T), p_1, ..., p_steps of p_{k+1} = (1 - a) distill(p_k) + a p_T."""
    p = p_T.copy() if p0 is None else p0.copy()
    out = [p]
    for _ in range(steps):
        p = (1 - a) * distill(p) + a * p_T
        out.append(p)
    return out


class Recursive(ClassifyMethod):
    name = "recursive"
    paper = "Recursive Meta-Distillation (Flouro & Chadwick, arXiv 2601.13100); the spec's instantiation, section 5.2"
    equation = ("target = (1 - a) softmax(f_k / T) + a softmax(f_T / T);  L = T^2 KL(target || softmax(f / T))   "
                "(teacher = generation k, anchor = the base teacher)")

    @dataclass
    class Config:
        a: float = param(0.3, "anchor weight: the share of the base teacher in every generation's target "
                         "(0: an unanchored chain)", lo=0.0, hi=1.0)
        anchor: Optional[str] = param(None, "the base teacher (a saved classifier or ccexam:mnist); default: "
                                      "teacher.name itself (generation 1)")
        temperature: float = param(1.0, "T of both distributions", lo=0.0, lo_open=True)

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self._anchor_logits: Optional[torch.Tensor] = None

    @torch.no_grad()
    def _anchor(self, idx: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if self.cfg.anchor is None:
            return teacher_logits
        if self.ctx.run.data.augment != "none":
            raise ConfigError("method=recursive with an anchor needs data.augment=none (its logits are cached)")
        if self._anchor_logits is None:
            from ..eval import predict
            from ..models import check_fits, load

            model, meta = load(self.cfg.anchor)
            check_fits(meta, self.ctx.data, "method_args.anchor")
            self._anchor_logits = predict(model.to(self.ctx.device), self.x, self.ctx.run.eval.batch_size,
                                          self.ctx.device)
        return self._anchor_logits[idx.cpu()].to(teacher_logits.device)

    def loss(self, model, batch) -> LossOut:
        T, a = self.cfg.temperature, self.cfg.a
        logits = model(batch["x"]).float()
        n = len(batch["y"])
        target = (1 - a) * torch.softmax(batch["teacher_logits"].float() / T, -1) + \
            a * torch.softmax(self._anchor(batch["idx"], batch["teacher_logits"]).float() / T, -1)
        loss = soft_target_kl(logits, target, temperature=T).sum()
        return LossOut(loss, n, {"kl_target": float(loss.detach()) / n / T**2})

"""`swing`: Swing distillation for classifiers (Li et al., arXiv 2212.08349), as retort's spec
reconstructs it from the abstract (methods/other.md §3.2, [I]): each training row's KD temperature
rises with its privacy score rho (the dataset's `private` marks, `retort.classify.data`; 0 where it
marks none), its teacher soft target gets noise, and the labels' cross-entropy is taken only on rows
below `ce_below`:

    tau_i = temperature + rise * rho_i
    L_i   = ce_weight * [rho_i < ce_below] CE(y_i, p_S) + kd_weight * s_i^2 KL(q~_i || p_S^{s_i})

with q~_i the teacher's softmax at tau_i plus N(0, (noise / C)^2) noise, clipped at 0 and
renormalised (`retort.losses.swing`), and s_i the student's temperature: `temperature` on every row
(`student_temperature=base`, the default: only the teacher's target swings) or tau_i (`swung`: the
spec's literal loss). With both sides at a high tau the KD term tends to matching the teacher's
logits, memorised ones included: on digits with 10% of the rows private and relabelled
(benchmarks/swing_digits.py) `swung` students reproduced the secret labels more often than `kd`'s,
`base` students less often. With rho = 0 everywhere and noise = 0 it is `kd` at
T = `temperature`, exactly. The noise of micro-batch k is drawn from a generator seeded by (run
seed, k), so a resumed run draws the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...config import param
from ...contract import LossOut, micro_batches
from ...losses.swing import swing_kd, swing_temperature, target_noise
from .base import ClassifyMethod


class Swing(ClassifyMethod):
    name = "swing"
    paper = ("Swing Distillation: A Privacy-Preserving Knowledge Distillation Framework (Li, Wu, Dong, Wu, Bian, "
             "Xiong 2022, arXiv 2212.08349); the spec's reconstruction from the abstract")
    equation = ("L = ce_weight * [rho < ce_below] CE(y, p_S) + kd_weight * s^2 KL(q~ || p_S^s),  "
                "q~ = normalize(max(softmax(z_T / tau) + eta, 0)),  tau = T + rise * rho,  eta ~ N(0, (noise / C)^2),  "
                "s = T (base) or tau (swung)")

    @dataclass
    class Config:
        temperature: float = param(2.0, "tau_0: the temperature of rows with rho = 0 (the spec's 1-2)",
                                   lo=0.0, lo_open=True)
        rise: float = param(8.0, "tau_max - tau_0: how much a row's temperature rises at rho = 1 (the spec's "
                            "tau_max = 10)", lo=0.0)
        noise: float = param(0.2, "std of the noise on the teacher's soft targets, in units of 1/C (C classes); "
                             "it moves a target by about a third of this in total variation (0.2: ~0.07, the "
                             "spec's 0.05-0.1); 0: none", lo=0.0)
        ce_weight: float = param(0.1, "weight of the label cross-entropy (as kd)", lo=0.0)
        kd_weight: float = param(0.9, "weight of the s^2-scaled KL to the noisy soft targets (as kd)", lo=0.0)
        student_temperature: str = param("base", "the student's temperature in the KD term: base (tau_0 on "
                                         "every row: only the teacher's targets swing) or swung (tau_i, as "
                                         "the teacher's: the spec's literal loss, which passes on more of what the "
                                         "teacher memorised)", choices=["base", "swung"])
        ce_below: float = param(0.5, "the label cross-entropy is taken on rows whose rho is below this only "
                                "(a private row's label is private too); 1.01: on every row", lo=0.0)

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self.rho = ctx.data.privacy("train")
        n = int((self.rho > 0).sum())
        ctx.log(f"swing: {n} of {len(self.rho)} training rows marked private" if n else
                "swing: the data marks no row private (rho = 0 everywhere): every row at temperature "
                f"{cfg.temperature} (mark rows with a `private` array, column or private.txt: retort.classify.data)")

    def batches(self, plan):
        # micro-batch k of the run (over every process) seeds its noise: the same after a resume
        for (k, _), batch in zip(micro_batches(plan), super().batches(plan)):
            yield {**batch, "rho": self.rho[batch["idx"]], "noise_seed": k}

    def loss(self, model, batch) -> LossOut:
        c = self.cfg
        logits = model(batch["x"]).float()
        teacher = batch["teacher_logits"]
        rho = batch["rho"].to(logits.device)
        tau = swing_temperature(rho, c.temperature, c.rise)
        eta = None
        if c.noise > 0:
            g = torch.Generator(device=teacher.device).manual_seed(self.ctx.run.seed * 1_000_003 + batch["noise_seed"])
            eta = target_noise(teacher.shape, c.noise, g)
        t_s = c.temperature if c.student_temperature == "base" else tau
        kd = swing_kd(logits, teacher, temperature=tau, eta=eta, student_temperature=t_s).sum()
        ce_rows = F.cross_entropy(logits, batch["y"], reduction="none")
        ce = torch.where(rho < c.ce_below, ce_rows, torch.zeros_like(ce_rows)).sum()
        n = len(batch["y"])
        return LossOut(c.ce_weight * ce + c.kd_weight * kd, n,
                       {"ce": float(ce.detach()) / n, "kd": float(kd.detach()) / n,
                        "private": float((rho > 0).float().mean())})

"""`dmd2`: Improved Distribution Matching Distillation (Yin et al., NeurIPS 2024, arXiv 2405.14867):
the DM loss without DMD's regression, two time-scale updates (5 critic steps per generator step), an
optional GAN head on the fake score, and multi-step generators trained by backward simulation
(`student.steps`: 4 steps at t = 999, 749, 499, 249)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import param
from .dm import DistributionMatching


class DMD2(DistributionMatching):
    name = "dmd2"
    paper = ("Improved Distribution Matching Distillation for Fast Image Synthesis (DMD2, Yin et al., NeurIPS 2024, "
             "arXiv 2405.14867); losses, TTUR and backward simulation as tianweiy/DMD2 main/edm/edm_guidance.py "
             "and train_edm.py")

    @dataclass
    class Config(DistributionMatching.Config):
        ratio: int = param(5, "critic updates per generator update (DMD2's dfake_gen_update_ratio)", lo=1)
        reg_weight: float = param(0.0, "DMD's regression loss (DMD2 drops it)", lo=0.0)

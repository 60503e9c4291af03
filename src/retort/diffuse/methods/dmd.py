"""`dmd`: Distribution Matching Distillation, the first version (Yin et al., CVPR 2024, arXiv
2311.18828): the DM loss plus a regression loss on precomputed (noise, teacher ODE output) pairs,
one critic update per generator update, no GAN. The paper regresses with LPIPS (lambda_reg = 0.25);
with no perceptual network here it is L2."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import param
from .dm import DistributionMatching


class DMD(DistributionMatching):
    name = "dmd"
    paper = ("One-step Diffusion with Distribution Matching Distillation (Yin et al., CVPR 2024, arXiv 2311.18828); "
             "the DM loss as tianweiy/DMD2 main/edm/edm_guidance.py, the regression loss from the paper (L2 here)")

    @dataclass
    class Config(DistributionMatching.Config):
        ratio: int = param(1, "critic updates per generator update (DMD: 1, no two time-scale rule)", lo=1)
        reg_weight: float = param(0.25, "the regression loss on (noise, teacher output) pairs (DMD: 0.25)", lo=0.0)

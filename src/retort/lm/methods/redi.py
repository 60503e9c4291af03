"""`redi`: Reinforcement Distillation from positive and negative traces (arXiv, May 2025; repo
Tim-Siu/reinforcement-distillation, `dpo2_trainer.py` loss_type="reinforce").

Stage 2 of REDI (stage 1 is `sft` on the positives; start this from its checkpoint). Per pair
(x, y_w correct, y_l incorrect of the same prompt):
    L = - log pi(y_w|x) / |y_w|  +  alpha * log pi(y_l|x) / |y_l|
log pi the summed completion-token log-probs, |y| the completion's token count including EOS;
reference-free, averaged over pairs. alpha = 0 is length-normalised SFT on the positives; alpha = 1
is "symmetric REDI" (which collapses at high learning rates: both log-probs fall); alpha = 0.8 is
the paper's default. Logged: `logp_chosen`, `logp_rejected` (per token) — collapse shows as both
falling fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import param
from .base import LossOut
from .pairs import PairConfig, PairMethod, pair_metrics, per_token


class REDI(PairMethod):
    name = "redi"
    paper = ("Harnessing Negative Signals: Reinforcement Distillation from Teacher Data for LLM Reasoning (REDI), "
             "May 2025; github.com/Tim-Siu/reinforcement-distillation")
    equation = "L = -log pi(y_w|x)/|y_w| + alpha * log pi(y_l|x)/|y_l|, averaged over pairs"

    @dataclass
    class Config(PairConfig):
        alpha: float = param(0.8, "weight of the negative term (0: SFT on positives; 1: symmetric REDI)",
                             lo=0.0, hi=1.0)

    def loss(self, model, batch) -> LossOut:
        (lw, nw), (ll, nl) = self.logps(model, batch)
        w, l_ = per_token(lw, nw), per_token(ll, nl)
        loss = (-w + self.cfg.alpha * l_).sum()
        return LossOut(loss, int(batch["n_pairs"]), pair_metrics(w, l_))

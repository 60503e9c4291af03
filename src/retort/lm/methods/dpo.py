"""`dpo` (Rafailov et al. 2023, arXiv:2305.18290) and `simpo` (Meng et al. 2024, arXiv:2405.14734)
on the positive/negative trace pairs of `redi` — the baselines REDI is compared with.

dpo:   L = -log sigmoid( beta * [ (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) ] )
       with ref the frozen student as the run started (start from the sft checkpoint, as REDI's
       baselines do; at step 0 pi = ref and L = log 2); for a LoRA student, the student itself
       with its adapters disabled.
simpo: L = -log sigmoid( beta * (log pi(y_w)/|y_w| - log pi(y_l)/|y_l|) - gamma ), reference-free.
Log-probs are summed over completion tokens (|y| counts them, EOS included). Logged: the
per-token log-probs of both sides, the reward margin and the pair accuracy (margin > 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...config import param
from .base import LossOut
from .pairs import PairConfig, PairMethod, pair_metrics, per_token, sequence_logps


class DPO(PairMethod):
    name = "dpo"
    paper = "Rafailov et al. 2023, Direct Preference Optimization, arXiv:2305.18290"
    equation = "L = -log sigmoid(beta * ((logpi_w - logref_w) - (logpi_l - logref_l)))"

    @dataclass
    class Config(PairConfig):
        beta: float = param(0.1, "inverse temperature of the implicit reward", lo=0.0, lo_open=True)

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self._ref = None

    def reference(self):
        """The starting checkpoint, frozen: a LoRA student with its adapters disabled (no second
        copy), else a second copy loaded as the run started."""
        if self._ref is None:
            self._ref = self.ctx.frozen_initial_student()
        return self._ref

    def loss(self, model, batch) -> LossOut:
        (lw, nw), (ll, nl) = self.logps(model, batch)
        with torch.no_grad():
            rlp, _ = sequence_logps(self.reference(), batch)
        k = batch["n_pairs"]
        margin = self.cfg.beta * ((lw - rlp[:k]) - (ll - rlp[k:]))
        loss = -F.logsigmoid(margin).sum()
        return LossOut(loss, int(k), pair_metrics(per_token(lw, nw), per_token(ll, nl), margin))


class SimPO(PairMethod):
    name = "simpo"
    paper = "Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward, arXiv:2405.14734"
    equation = "L = -log sigmoid(beta * (logpi_w/|y_w| - logpi_l/|y_l|) - gamma)"

    @dataclass
    class Config(PairConfig):
        beta: float = param(2.0, "reward scale", lo=0.0, lo_open=True)
        gamma: float = param(1.0, "target reward margin", lo=0.0)

    def loss(self, model, batch) -> LossOut:
        (lw, nw), (ll, nl) = self.logps(model, batch)
        w, l_ = per_token(lw, nw), per_token(ll, nl)
        margin = self.cfg.beta * (w - l_) - self.cfg.gamma
        loss = -F.logsigmoid(margin).sum()
        return LossOut(loss, int(batch["n_pairs"]), pair_metrics(w, l_, margin))

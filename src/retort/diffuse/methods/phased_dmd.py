"""`phased_dmd`: Phased DMD (Fan et al., arXiv 2510.27684, CVPR 2026): the noise range is split into
K phases at `bounds`; phase k trains one expert that takes samples at the phase's top level to
samples at its bottom level b_k (never to x0, except the last), with distribution matching only over
the subinterval above b_k and a fake score trained there on an unbiased target that needs only the
expert's samples x_s, not clean data. The result is a few-step mixture of experts, one per phase
(`Phased`, routed by noise level).

In EDM's convention (this track's): back-simulate with the frozen earlier experts to the phase's
top level; the expert's steps inside the phase with stochastic gradient truncation (a random exit
step carries the gradient) give x0_hat, and x_s = x0_hat + b_k n. Then sigma_t > b_k,
x_t = x_s + sqrt(sigma_t^2 - b_k^2) eps, and with each denoiser's prediction of x_s,
E[x_s | x_t] = x_t + (1 - b_k^2 / sigma_t^2) (D(x_t) - x_t),

    grad = (x_s_fake - x_s_real) / mean|x_s - x_s_real|,   L_G = 1/2 |x_s - sg(x_s - grad)|^2

(our reading: DMD2's form on x_s). The fake score F_k (one per phase, each a copy of the
teacher's network, the method's own modules) regresses onto
`retort.diffuse.targets.subinterval_denoiser_target(x_s, x_t, b_k, sigma_t)`, weighted by EDM's
lambda(sigma_t) (sigma_t^2 - b_k^2) / sigma_t^2 (the target's variance grows as sigma_t -> b_k; at
b_k = 0 this is EDM's loss). Phases run in order, `train.steps / K` steps each; an expert stops
changing when its phase ends (it takes no gradient after, which its optimizer leaves alone: the
loop sets gradients to None after every step, `retort.contract.Method`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from ...config import param
from ...contract import STUDENT, LossOut, Owned
from ...errors import ConfigError
from ...losses.diffuse import distribution_matching, edm_weight
from ..nets import Phased
from ..sampling import phase_levels, renoise
from ..targets import subinterval_denoiser_target
from .base import DiffuseMethod


class PhasedDMD(DiffuseMethod):
    name = "phased_dmd"
    paper = ("Phased DMD: Few-step Distribution Matching Distillation via Score Matching within Subintervals (Fan et "
             "al., arXiv 2510.27684); the unbiased subinterval target as the third-party lightx2v_train phased_dmd "
             "math.py (here in EDM's convention)")
    equation = ("phase k: x_s = G_k(...) + b_k n; x_t = x_s + sqrt(s_t^2 - b_k^2) eps; grad = (E_fake[x_s|x_t] - "
                "E_real[x_s|x_t]) / mean|x_s - E_real|; F_k -> x_t + s_t^2 (x_s - x_t) / (s_t^2 - b_k^2)")
    @dataclass
    class Config:
        bounds: List[float] = param([], "the phase boundaries between sigma_max and 0 (descending); [] = one "
                                    "boundary at sigma_data (signal-to-noise 1, the spec's rectified-flow 0.5)")
        ratio: int = param(5, "fake-score updates per generator update", lo=1)
        fake_lr: float = param(0.0, "the fake scores' learning rate (0: train.lr)", lo=0.0)

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self.bounds = self.all_bounds(cfg, ctx.data)
        self.levels_by_phase = phase_levels(self.bounds, ctx.run.student.steps)
        self.K = len(self.bounds) - 1

    @staticmethod
    def all_bounds(cfg, data) -> list[float]:
        inner = list(cfg.bounds) or [data.sigma_data]
        if any(not 0 < b < data.sigma_max for b in inner) or inner != sorted(inner, reverse=True):
            raise ConfigError(f"method_args.bounds={list(cfg.bounds)}: expected descending levels inside (0, "
                              f"{data.sigma_max})")
        return [data.sigma_max, *inner, 0.0]

    @classmethod
    def student_settings(cls, cfg, task, settings: dict) -> dict:
        levels = phase_levels(cls.all_bounds(cfg, task), settings["steps"])
        return {**settings, "sigmas": [s for phase in levels for s in phase]}

    @classmethod
    def prepare_student(cls, model, cfg, task, seed: int):
        if isinstance(model, Phased):  # resumed from a checkpoint
            return model
        bounds = cls.all_bounds(cfg, task)
        return Phased([model] + [copy.deepcopy(model) for _ in range(len(bounds) - 2)], bounds)

    def needs_teacher_weights(self) -> bool:
        return True  # each phase's fake score starts as the teacher's network

    def trains(self, step: int) -> set:
        """The fake scores every step, the experts every `ratio`-th."""
        return {STUDENT, "fake"} if step % self.cfg.ratio == 0 else {"fake"}

    def owned(self) -> dict:
        return {"fake": Owned(nn.ModuleList(self.ctx.teacher_net() for _ in range(self.K)),
                              lr=self.cfg.fake_lr or None, schedule="constant")}

    def phase(self, step: int) -> int:
        per = max(1, self.ctx.run.train.steps // self.K)
        return min(step // per, self.K - 1)

    def _sample_x_s(self, model, batch, k, grad: bool):
        """Back-simulation to phase k's top, the expert's steps with a random exit, re-noised to b_k."""
        z, labels = batch["z"], batch["labels"]
        gen = self.rng(batch, 7)
        earlier = [s for phase in self.levels_by_phase[:k] for s in phase]
        mine = self.levels_by_phase[k]
        x = z * self.bounds[0]
        with torch.no_grad():
            if earlier:
                x0 = renoise(model, z, earlier, labels, generator=gen)
                x = x0 + mine[0] * self.randn_like(x0, gen)
            exit_ = int(torch.randint(0, len(mine), (1,), generator=gen))
            for i in range(exit_):
                x0 = model(x, torch.full((len(x),), mine[i], device=x.device), labels)
                x = x0 + mine[i + 1] * self.randn_like(x0, gen)
        with torch.set_grad_enabled(grad):
            x0 = model(x, torch.full((len(x),), mine[exit_], device=x.device), labels)
        b = self.bounds[k + 1]
        return x0 + b * self.randn_like(x0, gen) if b > 0 else x0

    def _above(self, n, b, gen):
        lo = int(torch.searchsorted(self.levels, torch.tensor(b, dtype=self.levels.dtype), right=True))
        return self.level(n, gen, min(lo, 998), 999)

    def loss(self, model, batch) -> LossOut:
        k = self.phase(self.step)
        b = self.bounds[k + 1]
        fake = self.owned_modules["fake"][k]
        labels = batch["labels"]
        gen_step = STUDENT in self.trains(self.step)
        x_s = self._sample_x_s(model, batch, k, gen_step)
        n = len(x_s)
        shape = (-1, *([1] * (x_s.dim() - 1)))
        gen = self.rng(batch, 8)
        # the fake score of this phase, on the expert's detached samples
        xd = x_s.detach()
        st = self._above(n, b, gen)
        x_t = xd + (st**2 - b**2).sqrt().reshape(shape) * self.randn_like(xd, gen)
        target = subinterval_denoiser_target(xd, x_t, b, st.reshape(shape))
        w = edm_weight(st, self.ctx.data.sigma_data) * (st**2 - b**2) / st**2
        l_fake = (w * ((fake(x_t, st, labels) - target) ** 2).reshape(n, -1).mean(1)).sum()
        loss, metrics = l_fake, {"fake": float(l_fake.detach()) / n, "phase": k}
        if gen_step:
            st = self._above(n, b, gen)
            x_t = x_s.detach() + (st**2 - b**2).sqrt().reshape(shape) * self.randn_like(xd, gen)
            keep = (1 - b**2 / st**2).reshape(shape)
            real = self.real_x0(x_t, st, labels)
            with torch.no_grad():
                fk = fake(x_t, st, labels)
            xs_real, xs_fake = x_t + keep * (real - x_t), x_t + keep * (fk - x_t)
            l_dm = distribution_matching(x_s, xs_real, xs_fake).sum()
            loss = loss + l_dm
            metrics["dm"] = float(l_dm.detach()) / n
        return LossOut(loss, n, metrics)

"""`uni_instruct`: Uni-Instruct, one-step generators by a unified f-divergence expansion (Wang, Bai,
Zhang, Zhang, Luo, Sun; NeurIPS 2025, arXiv 2505.20755). The loss is reconstructed from the authors'
code (a-little-hoof/Uni_Instruct `fsim_loss.py`), with the density-ratio line read as the
derivation has it (the code's uses the loss value: a bug):

- the generator samples x_g = G(sigma_init z, sigma_init) (SiD's convention; sigma_init = 5
  sigma_data, the code's 2.5 for images in [-1, 1]);
- the fake score f_psi (a copy of the teacher's network) with a discriminator head on its features
  is trained on detached samples: lambda(sigma) |f_psi(x_g + sigma n) - x_g|^2 + lsd lambda(sigma)
  1/2 [BCE(d(x_real + sigma n), 1) + BCE(d(x_g + sigma n), 0)], ln sigma ~ N(P_mean, P_std^2);
- the generator: sigma on the Karras ramp t ~ U(0, tmax), x_sigma = x_g + sigma n,
  L_G = lsg sg(h(r)) l_SIM + lsg_gan BCE(d(x_sigma), 1) / w, with l_SIM SiD's
  (D_T - D_F).(D_F - x_g) / w, w = mean |x_g - D_T|, and h(r) = r^2 f''(r) of the chosen divergence at
  the discriminator's density ratio r = exp(clamp(logit, -7, 7)) (reverse KL: h = 1, SiD's loss);
- a warm-up of `warmup_steps` generator steps uses plain l_SIM (h = 1, no GAN), as the code's first 200k images.

The discriminator d is a head on the fake score's features (the code's, `disc=shared`: its loss
also trains the fake score's trunk) or its own small MLP on (c_in x_sigma, log sigma) (for 2-D
toys, `disc=separate`: the fake score then learns the score alone). Measured on the skewed
ring (BENCHMARKS, 3 seeds): with the shared head every divergence collapsed to 1-3 of 8 modes; with
a separate one they kept 3-7 and forward KL recalled the light modes best. Use `separate` for MLP
students.

Per-sample terms are means over dimensions (the code sums over pixels; `lsg` absorbs the scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...config import param
from ...contract import STUDENT, LossOut, Owned
from ...errors import ConfigError
from ...losses.diffuse import F_DIVERGENCES, edm_weight, f_weight, score_identity
from ..nets import _per_row
from ..sampling import SIGMA_MIN
from .base import DiffuseMethod, frozen
from .dm import FakeScore


class Discriminator(torch.nn.Module):
    """The separate discriminator for 2-D toys: an MLP on (c_in x_sigma, log sigma / 4), flattened."""

    def __init__(self, dim: int, sigma_data: float, width: int = 128):
        super().__init__()
        self.sigma_data = sigma_data
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                                       torch.nn.SiLU(), torch.nn.Linear(width, 1))

    def logit(self, x, sigma, labels=None):
        s = _per_row(sigma, x)
        c_in = 1 / (s**2 + self.sigma_data**2).sqrt()
        flat = x.reshape(len(x), -1) * c_in[:, None]
        return self.net(torch.cat([flat, s.log()[:, None] / 4], 1)).squeeze(-1)


class UniInstruct(DiffuseMethod):
    name = "uni_instruct"
    paper = ("Uni-Instruct: One-step Diffusion Model through Unified Diffusion Divergence Instruction (Wang et al., "
             "NeurIPS 2025, arXiv 2505.20755); losses from a-little-hoof/Uni_Instruct fsim_loss.py; SiD (Zhou et al., "
             "arXiv 2404.04057)")
    equation = ("L_G = lsg sg(h(r)) (D_T - D_F).(D_F - x_g) / mean|x_g - D_T| + lsg_gan BCE(d(x_sigma), 1) / w; "
                "L_psi = lambda |f_psi - x_g|^2 + lsd lambda BCE terms; r = exp(d)")
    needs_real = True

    @dataclass
    class Config:
        divergence: str = param("fkl", "the f-divergence: rkl (h = 1: SiD / DMD-like, mode-seeking), fkl (h = r), js "
                                "(r / (r + 1)), chi2 (2 r^2), jeffrey (0.4 r + 0.6)", choices=list(F_DIVERGENCES))
        sigma_init: float = param(0.0, "the generator's input level (0: 5 sigma_data, the code's 2.5 on images)",
                                  lo=0.0)
        fake_lr: float = param(0.0, "the fake score's and discriminator's learning rate (0: train.lr)", lo=0.0)
        ratio: int = param(1, "fake-score updates per generator update (the code alternates: 1)", lo=1)
        lsg: float = param(1.0, "the generator loss's scale", lo=0.0)
        lsd: float = param(1.0, "the discriminator term's weight beside the fake-score loss (the code: 1)", lo=0.0)
        lsg_gan: float = param(0.01, "the generator's GAN term (the code: 0.01)", lo=0.0)
        tmax: float = param(0.8, "the generator's levels: t ~ U(0, tmax) on the Karras ramp (the code: 800/1000)",
                            lo=0.0, hi=1.0)
        p_mean: float = param(-1.2, "the fake score's ln(sigma / (2 sigma_data)) mean (EDM: -1.2)")
        p_std: float = param(1.2, "its std (EDM: 1.2)", lo=0.0, lo_open=True)
        self_normalise: bool = param(True, "divide r by its batch mean (f-distill's variance reduction)")
        warmup_steps: int = param(200, "generator steps of plain l_SIM (h = 1, no GAN) before the f-weighting", lo=0)
        disc: str = param("shared", "the discriminator: shared (a head on the fake score's features, the code's) or "
                          "separate (its own MLP on (x_sigma, log sigma), the spec's 2-D toy; stable "
                          "where shared collapsed on the skewed ring)",
                          choices=["shared", "separate"])

    @classmethod
    def student_settings(cls, cfg, task, settings: dict) -> dict:
        # outside the levels the teacher (and the fake score) were trained at
        if cfg.sigma_init and not SIGMA_MIN <= cfg.sigma_init <= task.sigma_max:
            raise ConfigError(f"method_args.sigma_init={cfg.sigma_init}: expected a level from {SIGMA_MIN} to "
                              f"{task.sigma_max} ({task.name}'s sigma_max), or 0 for 5 sigma_data")
        if settings["steps"] != 1:
            return settings
        return {**settings, "sigmas": [cfg.sigma_init or 5 * task.sigma_data]}  # SiD's sigma_init

    def needs_teacher_weights(self) -> bool:
        return True  # the fake score starts as the teacher's network

    def trains(self, step: int) -> set:
        """The fake score (and a separate discriminator) every step, the generator every `ratio`-th."""
        return {STUDENT, *self.owned_modules} if step % self.cfg.ratio == 0 else set(self.owned_modules)

    def owned(self) -> dict:
        lr = self.cfg.fake_lr or None
        shared = self.cfg.disc == "shared"
        out = {"fake": Owned(FakeScore(self.ctx.teacher_net(), gan=shared), lr=lr, schedule="constant")}
        if not shared:
            dim = math.prod(self.ctx.data.shape)
            out["disc"] = Owned(Discriminator(dim, self.ctx.data.sigma_data), lr=lr, schedule="constant")
        return out

    def _noised(self, x, gen):
        cfg, sd = self.cfg, self.ctx.data.sigma_data
        ln = torch.randn(len(x), generator=gen) * cfg.p_std + cfg.p_mean + math.log(2 * sd)
        sigma = ln.exp().clamp(0.002, self.sigma_max).to(x.device)
        return sigma, self.randn_like(x, gen)

    def loss(self, model, batch) -> LossOut:
        cfg, fake, sd = self.cfg, self.owned_modules["fake"], self.ctx.data.sigma_data
        disc = self.owned_modules.get("disc", fake)  # what gives the logit
        labels = batch["labels"]
        step = self.step
        gen_step = STUDENT in self.trains(step)
        x = self.generate(model, batch, grad=gen_step)
        shape = (-1, *([1] * (x.dim() - 1)))
        gen = self.rng(batch, 6)
        # fake score + discriminator on detached samples
        xd = x.detach()
        sigma, n = self._noised(xd, gen)
        lam = edm_weight(sigma, sd)
        pred = fake(xd + sigma.reshape(shape) * n, sigma, labels)
        l_fake = (lam * ((pred - xd) ** 2).reshape(len(xd), -1).mean(1)).sum()
        real = batch["x_real"].to(x.device)
        d_real = disc.logit(real + sigma.reshape(shape) * n, sigma, labels)
        d_fake = disc.logit(xd + sigma.reshape(shape) * n, sigma, labels)
        bce = 0.5 * (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real), reduction="none")
                     + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake), reduction="none"))
        l_disc = cfg.lsd * (lam * bce).sum()
        loss = l_fake + l_disc
        n_ = len(x)
        metrics = {"fake": float(l_fake.detach()) / n_, "disc": float(l_disc.detach()) / n_}
        if gen_step:
            g_step = step // cfg.ratio
            t = torch.rand(n_, generator=gen) * cfg.tmax
            hi, lo = self.sigma_max ** (1 / 7), 0.002 ** (1 / 7)
            s = ((hi + (1 - t) * (lo - hi)) ** 7).to(x.device)
            x_s = x + s.reshape(shape) * self.randn_like(x, gen)
            with frozen(fake), frozen(disc):
                d_t = self.teacher()(x_s, s, labels) if not (labels is not None and self.ctx.run.teacher.guidance != 1) \
                    else self.teacher().guided(x_s, s, labels, self.ctx.run.teacher.guidance)
                d_f = fake(x_s, s, labels)
                logit = disc.logit(x_s, s, labels)
            w = (x.detach() - d_t.detach()).abs().reshape(n_, -1).mean(1).clamp(min=1e-8)
            sim = score_identity(d_t, d_f, x, w)
            warm = g_step < cfg.warmup_steps
            if warm:
                h = torch.ones_like(sim)
            else:
                r = logit.detach().clamp(-7, 7).exp()
                if cfg.self_normalise:
                    r = r / r.mean()
                h = f_weight(cfg.divergence, r)
            g_loss = cfg.lsg * (h.detach() * sim).sum()
            if not warm and cfg.lsg_gan > 0:
                g_gan = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit), reduction="none") / w
                g_loss = g_loss + cfg.lsg_gan * g_gan.sum()
            loss = loss + g_loss
            metrics.update(sim=float(sim.detach().mean()), h_mean=float(h.mean()), g=float(g_loss.detach()) / n_)
        return LossOut(loss, n_, metrics)

"""Distribution matching (DMD, Yin et al., CVPR 2024, arXiv 2311.18828; DMD2, Yin et al., NeurIPS
2024, arXiv 2405.14867), the machinery shared by `dmd`, `dmd2` and the methods built on them: the
fake-score critic (a trainable copy of the teacher's network, optionally with a GAN head on its
features) owned by the method and trained at its own rate, the generator's DM loss every
`ratio`-th step (DMD2's two time-scale update rule), and the optional GAN terms. The critic's loss
is computed and its optimizer steps every step, on detached generator samples; the generator's
loss only on its steps, and `trains` tells the loop to step the student's optimizer only then.
This module is not a method (no `dm` in the registry): the methods that build on it may import it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...config import param
from ...contract import STUDENT, LossOut, Owned
from ...losses.diffuse import distribution_matching, edm_denoising, gan_discriminator, gan_generator
from .base import DiffuseMethod, frozen


class FakeScore(nn.Module):
    """mu_fake: a denoiser (initialised as the teacher's network) and, for the GAN, a linear head on
    its features (the pooled bottleneck of a U-Net, the last hidden layer of an MLP)."""

    def __init__(self, denoiser: nn.Module, gan: bool):
        super().__init__()
        self.denoiser = denoiser
        self.head = None
        if gan:
            with torch.no_grad():
                dim = self._feature_dim()
            self.head = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def _feature_dim(self) -> int:
        d = self.denoiser
        d = d.models[0] if hasattr(d, "models") else d
        if hasattr(d, "unet"):
            return d.unet.config.block_out_channels[-1]
        return d.width

    def forward(self, x, sigma, labels=None):
        return self.denoiser(x, sigma, labels)

    def logit(self, x, sigma, labels=None):
        return self.head(self.denoiser.features(x, sigma, labels)).squeeze(-1)


class DistributionMatching(DiffuseMethod):
    name = "dm"
    paper = ("One-step Diffusion with Distribution Matching Distillation (Yin et al., CVPR 2024, arXiv 2311.18828); "
             "Improved Distribution Matching Distillation (DMD2, Yin et al., NeurIPS 2024, arXiv 2405.14867); "
             "losses and schedule as tianweiy/DMD2 main/edm/edm_guidance.py")
    equation = ("grad = (mu_fake(x_t) - mu_real(x_t)) / mean|x - mu_real(x_t)|, L_G = 1/2 ||x - sg(x - grad)||^2 "
                "[+ gen_cls_weight softplus(-d(x_t))]; L_fake = lambda(sigma) ||mu_fake(x + sigma n) - x||^2 "
                "[+ cls_weight (softplus(d(fake_t)) + softplus(-d(real_t)))]")

    @dataclass
    class Config:
        ratio: int = param(5, "critic updates per generator update (DMD2's dfake_gen_update_ratio; DMD: 1)", lo=1)
        fake_lr: float = param(0.0, "the fake score's learning rate (0: train.lr)", lo=0.0)
        min_t: float = param(0.02, "the DM loss's noise levels: indices min_t*1000 .. max_t*1000 of the 1000 "
                             "Karras levels (DMD2: 0.02 .. 0.98)", lo=0.0, hi=1.0)
        max_t: float = param(0.98, "see min_t", lo=0.0, hi=1.0)
        gan_weight: float = param(0.0, "the generator's GAN term (DMD2 ImageNet: 3e-3; 0: no GAN head)", lo=0.0)
        cls_weight: float = param(1e-2, "the discriminator's loss weight beside the fake-score loss (DMD2: 1e-2)",
                                  lo=0.0)
        gan_max_t: float = param(1.0, "diffusion GAN: real and fake are noised at a level below this fraction "
                                 "of the 1000 levels before the head sees them", lo=0.0, hi=1.0)
        reg_weight: float = param(0.0, "DMD's regression loss on (noise, teacher ODE output) pairs (DMD: 0.25 with "
                                  "LPIPS; here L2)", lo=0.0)
        reg_pairs: int = param(1024, "how many (noise, teacher output) pairs the regression loss uses", lo=1)
        trend_window: int = param(100, "steps per window of the fake-score loss trend (a collapse detector: a "
                                  "rising critic loss is logged and warned about)", lo=10)

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self.needs_real = cfg.gan_weight > 0
        self._pairs = None
        self._trend: list[float] = []
        self._trend_first = None
        self._warned = False
        self.last_trend = None  # the fake-score loss's last window against its first

    def needs_teacher_weights(self) -> bool:
        return True  # the fake score starts as the teacher's network

    def trains(self, step: int) -> set:
        """DMD2's two time-scale rule: the fake score every step, the generator every `ratio`-th."""
        return {STUDENT, "fake"} if step % self.cfg.ratio == 0 else {"fake"}

    def owned(self) -> dict:
        fake = FakeScore(self.ctx.teacher_net(), gan=self.cfg.gan_weight > 0)
        return {"fake": Owned(fake, lr=self.cfg.fake_lr or None, schedule="constant")}

    def state_dict(self) -> dict:
        return {"trend_first": self._trend_first if self._trend_first is not None else -1.0}

    def load_state_dict(self, state: dict) -> None:
        v = float(state.get("trend_first", -1.0))
        self._trend_first = None if v < 0 else v

    # ------------------------------------------------------------------ regression pairs (DMD)
    def pairs(self):
        """(noise, teacher Heun output) pairs, drawn once from the run's seed (DMD's precomputed set)."""
        if self._pairs is None:
            from ..sampling import heun, karras

            run, data = self.ctx.run, self.ctx.data
            g = torch.Generator().manual_seed(run.seed + 99)
            z = torch.randn(self.cfg.reg_pairs, *data.shape, generator=g)
            labels = data.labels(self.cfg.reg_pairs, g)
            dev = self.ctx.device
            zl = labels.to(dev) if labels is not None else None
            y = heun(self.teacher(), z.to(dev), karras(run.teacher.steps, sigma_max=self.sigma_max), zl,
                     run.teacher.guidance)
            self._pairs = (z, labels, y.cpu())
        return self._pairs

    # ------------------------------------------------------------------ the losses
    def generator_loss(self, model, batch, x):
        cfg, fake = self.cfg, self.owned_modules["fake"]
        gen = self.rng(batch, 2)
        labels = batch["labels"]
        sigma = self.level(len(x), gen, int(cfg.min_t * 1000), int(cfg.max_t * 1000) - 1)
        x_t = x + sigma.reshape(-1, *([1] * (x.dim() - 1))) * self.randn_like(x, gen)
        real = self.real_x0(x_t.detach(), sigma, labels)
        with torch.no_grad():
            fake_x0 = fake(x_t.detach(), sigma, labels)
        loss = distribution_matching(x, real, fake_x0).sum()
        metrics = {"dm": float(loss.detach()) / len(x)}
        if cfg.gan_weight > 0:
            with frozen(fake):
                g_cls = gan_generator(fake.logit(x_t, sigma, labels)).sum()
            loss = loss + cfg.gan_weight * g_cls
            metrics["gen_cls"] = float(g_cls.detach()) / len(x)
        if cfg.reg_weight > 0:
            z, zl, y = self.pairs()
            idx = torch.randint(0, len(z), (len(x),), generator=gen)
            dev = x.device
            pl = zl[idx].to(dev) if zl is not None else None
            out = model(z[idx].to(dev) * self.sigma_max, torch.full((len(idx),), self.sigma_max, device=dev), pl)
            reg = ((out - y[idx].to(dev)) ** 2).reshape(len(idx), -1).mean(1).sum()
            loss = loss + cfg.reg_weight * reg
            metrics["reg"] = float(reg.detach()) / len(x)
        return loss, metrics

    def critic_loss(self, batch, x):
        cfg, fake, sd = self.cfg, self.owned_modules["fake"], self.ctx.data.sigma_data
        gen = self.rng(batch, 3)
        labels = batch["labels"]
        x = x.detach()
        sigma = self.level(len(x), gen)
        shape = (-1, *([1] * (x.dim() - 1)))
        pred = fake(x + sigma.reshape(shape) * self.randn_like(x, gen), sigma, labels)
        loss = edm_denoising(pred, x, sigma, sd).sum()
        metrics = {"fake": float(loss.detach()) / len(x)}
        if cfg.gan_weight > 0:
            real = batch["x_real"].to(x.device)
            s = self.level(len(x), gen, 0, max(0, int(cfg.gan_max_t * 1000) - 1))
            n = self.randn_like(x, gen)
            d = gan_discriminator(fake.logit(x + s.reshape(shape) * n, s, labels),
                                  fake.logit(real + s.reshape(shape) * n, s, labels)).sum()
            loss = loss + cfg.cls_weight * d
            metrics["cls"] = float(d.detach()) / len(x)
        self._watch(metrics["fake"])
        return loss, metrics

    def _watch(self, value: float) -> None:
        """The fake-score loss trend: the mean of each window of steps against the first window's."""
        self._trend.append(value)
        if len(self._trend) < self.cfg.trend_window:
            return
        mean = sum(self._trend) / len(self._trend)
        self._trend = []
        if self._trend_first is None:
            self._trend_first = mean
            return
        ratio = mean / max(self._trend_first, 1e-12)
        if (ratio > 10 or ratio != ratio) and not self._warned:
            self._warned = True
            self.ctx.log(f"warning: the fake-score loss has risen {ratio:.1f}x since its first {self.cfg.trend_window} "
                         "steps: the critic is not keeping up (a collapsing or oscillating student; a lower fake_lr "
                         "or a higher ratio usually helps)")
        self.last_trend = ratio

    def loss(self, model, batch) -> LossOut:
        gen_step = STUDENT in self.trains(self.step)
        x = self.generate(model, batch, grad=gen_step)
        loss, metrics = self.critic_loss(batch, x)
        if gen_step:
            g_loss, g_metrics = self.generator_loss(model, batch, x)
            loss = loss + g_loss
            metrics.update(g_metrics)
        if self.last_trend is not None:
            metrics["fake_trend"] = self.last_trend
        return LossOut(loss, len(x), metrics)

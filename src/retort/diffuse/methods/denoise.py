"""`denoise`: train a denoiser (the teacher). On data: EDM's denoising score matching (Karras et al.
2022, arXiv 2206.00364, eq. 2 and table 1: ln sigma ~ N(P_mean, P_std^2), weight lambda(sigma) =
(sigma^2 + sd^2) / (sigma sd)^2), labels dropped to the null class at `label_dropout` for
classifier-free guidance. On a mixture with an exact teacher (`target=exact`): regression of the
network onto the closed-form denoiser at the same noisy points, a lower-variance target, which
makes the network a faithful copy that initialises the student and the fake score."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import param
from ...contract import LossOut
from ...errors import ConfigError
from ...losses.diffuse import edm_denoising
from .base import DiffuseMethod


class Denoise(DiffuseMethod):
    name = "denoise"
    paper = ("Elucidating the Design Space of Diffusion-Based Generative Models (EDM, Karras et al., NeurIPS 2022, "
             "arXiv 2206.00364); classifier-free guidance's label dropout (Ho & Salimans 2022, arXiv 2207.12598)")
    equation = "L = lambda(sigma) ||D(x0 + sigma n, sigma, y) - target||^2, target = x0 (data) or D_exact(x0 + sigma n)"

    @dataclass
    class Config:
        target: str = param("data", "data: denoising score matching on real samples; exact: regress onto the "
                            "mixture's closed-form denoiser", choices=["data", "exact"])
        p_mean: float = param(-1.2, "mean of ln(sigma / (2 sigma_data)) (EDM: -1.2 with sigma_data 0.5)")
        p_std: float = param(1.2, "std of ln sigma (EDM: 1.2)", lo=0.0, lo_open=True)
        uniform: float = param(0.0, "share of the batch whose ln sigma is uniform over the full range "
                               "[ln 0.002, ln sigma_max] instead (every level a distiller visits)", lo=0.0, hi=1.0)
        label_dropout: float = param(0.1, "share of labels replaced by the null class (0: no guidance)",
                                     lo=0.0, hi=1.0)

    needs_real = True

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        if cfg.target == "exact" and ctx.data.mixture is None:
            raise ConfigError(f"method_args.target=exact: {ctx.data.name} has no exact denoiser (mixtures only)")

    def teacher_needs(self) -> tuple:
        return (("denoiser",),) if self.cfg.target == "exact" else ()

    def loss(self, model, batch) -> LossOut:
        cfg, data = self.cfg, self.ctx.data
        x0 = batch["x_real"]
        gen = self.rng(batch, 4)
        n = len(x0)
        ln = torch.randn(n, generator=gen) * cfg.p_std + cfg.p_mean + float(torch.log(torch.tensor(2 * data.sigma_data)))
        if cfg.uniform > 0:
            lo, hi = float(torch.log(torch.tensor(0.002))), float(torch.log(torch.tensor(self.sigma_max)))
            u = torch.rand(n, generator=gen) < cfg.uniform
            ln = torch.where(u, lo + (hi - lo) * torch.rand(n, generator=gen), ln)
        sigma = ln.exp().clamp(0.002, self.sigma_max).to(x0.device)
        x = x0 + sigma.reshape(-1, *([1] * (x0.dim() - 1))) * self.randn_like(x0, gen)
        labels = batch["labels"]
        if labels is not None and cfg.label_dropout > 0:
            drop = (torch.rand(n, generator=gen) < cfg.label_dropout).to(labels.device)
            labels = torch.where(drop, torch.full_like(labels, data.n_classes), labels)
        target = x0
        if cfg.target == "exact":
            target = self.teacher()(x, sigma, batch["labels"] if not cfg.label_dropout else labels)
        loss = edm_denoising(model(x, sigma, labels), target, sigma, data.sigma_data).sum()
        return LossOut(loss, n, {"denoise": float(loss.detach()) / n})

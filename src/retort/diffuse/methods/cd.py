"""`cd`: consistency distillation (Song, Dhariwal, Chen, Sutskever, ICML 2023, arXiv 2303.01469,
Algorithm 2; the baseline the diffusers LCM scripts implement). A real sample x0 is noised to
sigma_{n+1} of N Karras levels, one Heun step of the teacher's ODE gives x_n at sigma_n, and the
student is trained to agree with its EMA target across the step:

    L = d(f_theta(x0 + sigma_{n+1} z, sigma_{n+1}), f_theta-(x_hat_n, sigma_n)),  theta- <- mu theta- + (1 - mu) theta

with d the squared L2 (the paper's LPIPS needs a perceptual network) or iCT's pseudo-Huber. The
student is an EDM-preconditioned denoiser, whose c_skip(sigma_min) = 1 - 6e-6 and c_out(sigma_min) =
0.002 meet the boundary condition f(x, sigma_min) = x to within 0.002 F (the paper's c_skip,
c_out meet it exactly); sampling is the re-noising multi-step sampler (its Algorithm 1)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ...config import param
from ...contract import LossOut
from ...losses.diffuse import consistency
from ..sampling import karras
from .base import DiffuseMethod, freeze


class CD(DiffuseMethod):
    name = "cd"
    paper = ("Consistency Models (Song, Dhariwal, Chen, Sutskever, ICML 2023, arXiv 2303.01469), Algorithm 2 "
             "(consistency distillation); pseudo-Huber from Improved Techniques for Training Consistency Models "
             "(Song & Dhariwal 2023, arXiv 2310.14189)")
    equation = "L = d(f(x0 + s_{n+1} z, s_{n+1}), f_ema(Heun_teacher(s_{n+1} -> s_n), s_n))"

    @dataclass
    class Config:
        n_levels: int = param(18, "N, the Karras levels of the teacher's ODE steps (the paper's CIFAR CD: 18)", lo=2)
        ema: float = param(0.95, "mu, the target network's EMA rate (the paper's CD: 0.95)", lo=0.0, hi=1.0)
        huber_c: float = param(0.0, "0: squared L2; > 0: pseudo-Huber with this c (iCT: 0.00054 sqrt(dims))", lo=0.0)

    needs_real = True

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self.grid = karras(cfg.n_levels, sigma_max=self.sigma_max).flip(0).float()  # ascending
        self._target = None
        self._ema_step = None  # the optimizer step whose parameters the target has taken in

    def target(self):
        """f_theta-: a frozen copy of the student, made at first use."""
        if self._target is None:
            self._target = freeze(copy.deepcopy(self.student()))
        return self._target

    def state_dict(self) -> dict:
        return {f"target.{k}": v for k, v in self.target().state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        t = self.target()
        t.load_state_dict({k.removeprefix("target."): v for k, v in state.items() if k.startswith("target.")})

    def loss(self, model, batch) -> LossOut:
        cfg = self.cfg
        self._ema_to(self.step)
        x0, labels = batch["x_real"], batch["labels"]
        gen = self.rng(batch, 5)
        n = len(x0)
        i = torch.randint(0, cfg.n_levels - 1, (n,), generator=gen)
        s_lo, s_hi = self.grid[i].to(x0.device), self.grid[i + 1].to(x0.device)
        shape = (-1, *([1] * (x0.dim() - 1)))
        x_hi = x0 + s_hi.reshape(shape) * self.randn_like(x0, gen)
        with torch.no_grad():  # one Heun step of the teacher's ODE, s_hi -> s_lo
            d = (x_hi - self.real_x0(x_hi, s_hi, labels)) / s_hi.reshape(shape)
            x_lo = x_hi + (s_lo - s_hi).reshape(shape) * d
            d2 = (x_lo - self.real_x0(x_lo, s_lo, labels)) / s_lo.reshape(shape)
            x_lo = x_hi + (s_lo - s_hi).reshape(shape) * (d + d2) / 2
            target = self.target()(x_lo, s_lo, labels)
        loss = consistency(model(x_hi, s_hi, labels), target, cfg.huber_c).sum()
        return LossOut(loss, n, {"cd": float(loss.detach()) / n})

    @torch.no_grad()
    def _ema_to(self, step: int) -> None:
        """theta- <- mu theta- + (1 - mu) theta once per optimizer step, with the parameters the last
        step left (the first micro-batch of step k sees what step k - 1 wrote). Done here rather than
        in `on_step`, so a checkpoint at step k holds the target before step k's update, and a run
        resumed there makes it before its first loss, as the uninterrupted run did."""
        t = self.target()
        if self._ema_step == step:
            return
        self._ema_step = step
        if step == 0:
            return
        for pt, p in zip(t.parameters(), self.student().parameters()):
            pt.mul_(self.cfg.ema).add_(p.detach(), alpha=1 - self.cfg.ema)

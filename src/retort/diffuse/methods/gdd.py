"""`gdd`: "Diffusion Models Are Innate One-Step Generators" (Zheng & Yang, arXiv 2405.20750; GDD /
D2O): the teacher's network, run once at sigma_max, fine-tuned by a GAN loss alone (an "exclusive
distributional loss": no per-sample teacher matching), with the authors' code defaults
`loss_type='ns'`, `teacher_type='none'` and R1 on real samples:

    L_G = softplus(-D(G(sigma_max z))),  L_D = softplus(D(fake)) + softplus(-D(real)) + gamma/2 |grad_x D(real)|^2

GDD-I (`freeze=true`) freezes most of the generator, as the authors' `--freeze=1` does (every U-Net
parameter named with "conv" or "proj" inside a block: the convolutions and attention output
projections, diffusers' `to_out`);
for an MLP the hidden Linear weight matrices (our reading for MLPs): biases, norms and the noise /
class embeddings train. The discriminator is a module the method owns: an MLP on points, a small
conv net on images, class-conditional by projection (Miyato & Koyama 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...config import param
from ...contract import STUDENT, LossOut, Owned
from ...losses.diffuse import gan_discriminator, gan_generator
from .base import DiffuseMethod, frozen


class Discriminator(nn.Module):
    def __init__(self, shape: tuple, n_classes: int, width: int = 128):
        super().__init__()
        if len(shape) == 1:
            self.body = nn.Sequential(nn.Linear(shape[0], width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                                      nn.LeakyReLU(0.2), nn.Linear(width, width), nn.LeakyReLU(0.2))
            dim = width
        else:
            c, h, w = shape
            self.body = nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.LeakyReLU(0.2),
                                      nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                                      nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Flatten())
            dim = 128 * ((h + 3) // 4) * ((w + 3) // 4)
        self.out = nn.Linear(dim, 1)
        self.embed = nn.Embedding(n_classes, dim) if n_classes else None

    def forward(self, x, labels=None):
        h = self.body(x)
        logit = self.out(h).squeeze(-1)
        if self.embed is not None and labels is not None:
            logit = logit + (self.embed(labels) * h).sum(-1)
        return logit


def gdd_freeze(model) -> int:
    """Freeze what GDD-I freezes; returns how many parameters stay trainable."""
    if hasattr(model, "unet"):
        for name, p in model.unet.named_parameters():
            # diffusers names the attention output projection to_out (q, k, v: to_q/k/v, which GDD-I trains)
            if "blocks" in name and ("conv" in name or "to_out" in name or "proj" in name):
                p.requires_grad_(False)
    else:
        for lin in model.hidden:
            lin.weight.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class GDD(DiffuseMethod):
    name = "gdd"
    paper = ("Diffusion Models Are Innate One-Step Generators (Zheng & Yang, arXiv 2405.20750; ICML 2025 as D2O); "
             "losses, R1 and GDD-I freezing as Zyriix/GDD training/loss.py and train.sh")
    equation = "L_G = softplus(-D(G(s_max z))); L_D = softplus(D(fake)) + softplus(-D(real)) + gamma/2 |grad D(real)|^2"

    @dataclass
    class Config:
        d_lr: float = param(0.0, "the discriminator's learning rate (0: train.lr; the authors' CIFAR: 1e-4 both)", lo=0.0)
        r1_gamma: float = param(1e-2, "R1 weight gamma on real samples (the code: 1e-4 at CIFAR scale; the spec's "
                                "toy range 1e-4 .. 1e-2)", lo=0.0)
        freeze: bool = param(False, "GDD-I: freeze the convolutions / attention projections (MLP: the hidden weight "
                             "matrices) and train the rest")
        d_steps: int = param(1, "discriminator updates per generator update", lo=1)

    needs_real = True

    def teacher_needs(self) -> tuple:
        return ()  # no teacher score: the teacher is only the generator's starting weights

    @classmethod
    def prepare_student(cls, model, cfg, task, seed: int):
        if cfg.freeze:  # GDD-I, before the optimizer sees the parameters
            gdd_freeze(model)
        return model

    def trains(self, step: int) -> set:
        """The discriminator every step, the generator every `d_steps`-th."""
        return {STUDENT, "disc"} if step % self.cfg.d_steps == 0 else {"disc"}

    def owned(self) -> dict:
        d = self.ctx.data
        return {"disc": Owned(Discriminator(tuple(d.shape), d.n_classes), lr=self.cfg.d_lr or None,
                              schedule="constant")}

    def loss(self, model, batch) -> LossOut:
        disc = self.owned_modules["disc"]
        labels, z = batch["labels"], batch["z"]
        gen_step = STUDENT in self.trains(self.step)
        x = self.generate(model, batch, grad=gen_step)
        real = batch["x_real"].to(x.device).requires_grad_(self.cfg.r1_gamma > 0)
        d_real = disc(real, labels)
        loss = gan_discriminator(disc(x.detach(), labels), d_real).sum()
        metrics = {"d": float(loss.detach()) / len(z)}
        if self.cfg.r1_gamma > 0:
            (g,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            r1 = 0.5 * self.cfg.r1_gamma * g.reshape(len(g), -1).pow(2).sum(1).sum()
            loss = loss + r1
            metrics["r1"] = float(r1.detach()) / len(z)
        if gen_step:
            with frozen(disc):
                g_loss = gan_generator(disc(x, labels)).sum()
            loss = loss + g_loss
            metrics["g"] = float(g_loss.detach()) / len(z)
        return LossOut(loss, len(z), metrics)

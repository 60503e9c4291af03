"""Denoisers: every model of the track is called as D(x, sigma, labels) -> the prediction of x0 under
the EDM (variance-exploding) convention x_sigma = x0 + sigma * n (Karras et al. 2022). Methods and
samplers see nothing else, so an exact mixture, an MLP and a diffusers U-Net are interchangeable.

Parameterisation (stated, since tools differ): networks are EDM-preconditioned,

    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise),   c_skip = sd^2 / (sigma^2 + sd^2),
    c_out = sigma sd / sqrt(sigma^2 + sd^2),  c_in = 1 / sqrt(sigma^2 + sd^2),  c_noise = log(sigma) / 4

with sd = sigma_data: exactly diffusers' `EDMEulerScheduler` with `prediction_type="epsilon"` (its
name for EDM's F-prediction), so a saved U-Net samples with that scheduler unchanged. A diffusers
model trained the DDPM way (`DDPMScheduler`, epsilon / sample / v_prediction over alpha-bar) is
read through `DDPMDenoiser`, which maps sigma to the scheduler's (fractional) timestep.

Labels: classes 0..C-1; label C (or `labels=None`) is the unconditional model (the teacher is
trained with labels dropped to C at a rate, for classifier-free guidance). Guidance convention
(diffusers'): D_g = D(x, None) + g (D(x, y) - D(x, None)); g = 1 is no guidance.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def edm_coeffs(sigma: torch.Tensor, sigma_data: float):
    s2, d2 = sigma**2, sigma_data**2
    return d2 / (s2 + d2), sigma * sigma_data / (s2 + d2).sqrt(), 1 / (s2 + d2).sqrt(), sigma.log() / 4


def _per_row(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma as a (N,) tensor on x's device."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return s.expand(len(x)).clone() if s.dim() == 0 else s.reshape(len(x))


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


class Denoiser(nn.Module):
    """`forward(x, sigma, labels=None)` -> x0-prediction; `n_classes` (0: unconditional)."""

    n_classes: int = 0
    sigma_data: float = 0.5

    def guided(self, x, sigma, labels, scale: float):
        """Classifier-free guidance (g = 1: the conditional model alone)."""
        if labels is None or scale == 1.0:
            return self(x, sigma, labels)
        both = self(torch.cat([x, x]), torch.cat([_per_row(sigma, x)] * 2),
                    torch.cat([labels, torch.full_like(labels, self.n_classes)]))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)


class ExactDenoiser(Denoiser):
    """The closed-form denoiser of a Gaussian mixture (`retort.diffuse.mixtures.Mixture`)."""

    def __init__(self, mixture, n_classes: int = 0, sigma_data: float = 1.0):
        super().__init__()
        self.mixture, self.n_classes, self.sigma_data = mixture, n_classes, sigma_data

    def forward(self, x, sigma, labels=None):
        if labels is not None and self.n_classes and bool((labels >= self.n_classes).any()):
            uncond = labels >= self.n_classes
            out = torch.empty_like(x)
            if uncond.any():
                out[uncond] = self(x[uncond], _per_row(sigma, x)[uncond])
            if (~uncond).any():
                out[~uncond] = self(x[~uncond], _per_row(sigma, x)[~uncond], labels[~uncond])
            return out
        m = self.mixture
        xd = x.double()
        return m.denoise(xd, _per_row(sigma, xd), labels).to(x.dtype)


class FourierEmbedding(nn.Module):
    """sin/cos of c_noise at fixed log-spaced frequencies, then an MLP (EDM's noise embedding)."""

    def __init__(self, width: int, freqs: int = 16):
        super().__init__()
        self.register_buffer("freqs", 2 ** torch.arange(freqs, dtype=torch.float32) / 8)
        self.mlp = nn.Sequential(nn.Linear(2 * freqs, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, c):
        a = c[:, None] * self.freqs[None] * math.pi
        return self.mlp(torch.cat([a.sin(), a.cos()], -1))


class MLPDenoiser(Denoiser):
    """An MLP denoiser for points: FiLM on the noise (and class) embedding in every hidden layer,
    EDM-preconditioned. `features(x, sigma, labels)`: the last hidden layer (a GAN head reads it)."""

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, n_classes: int = 0, sigma_data: float = 1.0):
        super().__init__()
        self.dim, self.width, self.depth, self.n_classes, self.sigma_data = dim, width, depth, n_classes, sigma_data
        self.embed = FourierEmbedding(width)
        self.classes = nn.Embedding(n_classes + 1, width) if n_classes else None
        self.inp = nn.Linear(dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.film = nn.ModuleList(nn.Linear(width, 2 * width) for _ in range(depth))
        self.out = nn.Linear(width, dim)

    def config(self) -> dict:
        return {"arch": "mlp", "dim": self.dim, "width": self.width, "depth": self.depth,
                "n_classes": self.n_classes, "sigma_data": self.sigma_data}

    def _trunk(self, x, sigma, labels):
        sigma = _per_row(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_coeffs(sigma, self.sigma_data)
        e = self.embed(c_noise)
        if self.classes is not None:
            lab = labels if labels is not None else torch.full((len(x),), self.n_classes, device=x.device)
            e = e + self.classes(lab)
        e = nn.functional.silu(e)
        h = self.inp(c_in[:, None] * x)
        for lin, film in zip(self.hidden, self.film):
            scale, shift = film(e).chunk(2, -1)
            h = nn.functional.silu(lin(nn.functional.silu(h)) * (1 + scale) + shift)
        return h, c_skip, c_out

    def features(self, x, sigma, labels=None):
        return self._trunk(x, sigma, labels)[0]

    def forward(self, x, sigma, labels=None):
        h, c_skip, c_out = self._trunk(x, sigma, labels)
        return c_skip[:, None] * x + c_out[:, None] * self.out(h)


class CausalDenoiser(Denoiser):
    """A block-causal few-step generator for sequences (the student of Self Forcing and LiveTalk, at
    toy scale): `forward(x, sigma, context)` denoises one block of `block` frames, x (N, block * 2),
    given the clean frames before it, `context` (N, context * 2; None for the first block, which
    sees zeros and a flag). EDM-preconditioned in the block, FiLM on the noise level, like
    `MLPDenoiser`. `rollout` generates any number of blocks autoregressively, each from its own
    noise at the student's levels, the context being its own clean outputs (LiveTalk's context
    noise 0), so a sequence can be longer than any it was trained on."""

    def __init__(self, frame_dim: int = 2, block: int = 3, context: int = 3, width: int = 128, depth: int = 3,
                 sigma_data: float = 1.0):
        super().__init__()
        if not 1 <= context <= block:
            raise ValueError(f"context {context}: expected 1 .. {block} frames (the previous block's)")
        self.frame_dim, self.block, self.context, self.width, self.depth = frame_dim, block, context, width, depth
        self.sigma_data = sigma_data
        d, c = frame_dim * block, frame_dim * context
        self.embed = FourierEmbedding(width)
        self.inp = nn.Linear(d + c + 1, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.film = nn.ModuleList(nn.Linear(width, 2 * width) for _ in range(depth))
        self.out = nn.Linear(width, d)

    def config(self) -> dict:
        return {"arch": "causal", "frame_dim": self.frame_dim, "block": self.block, "context": self.context,
                "width": self.width, "depth": self.depth, "sigma_data": self.sigma_data}

    def forward(self, x, sigma, context=None):
        sigma = _per_row(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_coeffs(sigma, self.sigma_data)
        n = len(x)
        if context is None:
            ctx = x.new_zeros(n, self.frame_dim * self.context + 1)
            ctx[:, -1] = 1.0
        else:
            ctx = torch.cat([context[:, -self.frame_dim * self.context:] / self.sigma_data, x.new_zeros(n, 1)], 1)
        e = nn.functional.silu(self.embed(c_noise))
        h = self.inp(torch.cat([c_in[:, None] * x, ctx], 1))
        for lin, film in zip(self.hidden, self.film):
            scale, shift = film(e).chunk(2, -1)
            h = nn.functional.silu(lin(nn.functional.silu(h)) * (1 + scale) + shift)
        return c_skip[:, None] * x + c_out[:, None] * self.out(h)

    def rollout(self, z, sigmas, generator=None, exits=None, grad: bool = False):
        """A whole sequence from noise z (N, frames * frame_dim; frames a multiple of `block`), block
        by block at the levels `sigmas` (each x0 re-noised to the next level, DMD2's sampler).
        `exits[b]`: the step block b stops at (training's stochastic truncation; default: all
        steps); with `grad`, only that step of each block carries gradient (the steps before it and
        the context do not). Returns (N, frames * frame_dim)."""
        sig = [float(s) for s in sigmas]
        width = self.frame_dim * self.block
        if z.shape[1] % width:
            raise ValueError(f"a sequence of {z.shape[1] // self.frame_dim} frames is not whole blocks of {self.block}")
        out, ctx = [], None
        for b in range(z.shape[1] // width):
            stop = len(sig) - 1 if exits is None else int(exits[b])
            x = z[:, b * width:(b + 1) * width] * sig[0]
            with torch.no_grad():
                for i in range(stop):
                    x0 = self(x, sig[i], ctx)
                    x = x0 + sig[i + 1] * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            with torch.set_grad_enabled(grad):
                x0 = self(x, sig[stop], ctx)
            out.append(x0)
            ctx = x0.detach()
        return torch.cat(out, 1)


class UNetDenoiser(Denoiser):
    """A diffusers `UNet2DModel` under EDM preconditioning (diffusers' `EDMEulerScheduler` with
    prediction_type "epsilon"); labels through the U-Net's class embedding (C + 1 entries, the last
    the unconditional one). `features`: the mid block's output, pooled (a GAN head reads it)."""

    def __init__(self, unet, n_classes: int = 0, sigma_data: float = 0.5):
        super().__init__()
        self.unet, self.n_classes, self.sigma_data = unet, n_classes, sigma_data

    def config(self) -> dict:
        return {"arch": "unet", "n_classes": self.n_classes, "sigma_data": self.sigma_data}

    def forward(self, x, sigma, labels=None):
        sigma = _per_row(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_coeffs(sigma, self.sigma_data)
        cls = None
        if self.n_classes:
            cls = labels if labels is not None else torch.full((len(x),), self.n_classes, device=x.device)
        f = self.unet(_bcast(c_in, x) * x, c_noise, class_labels=cls).sample
        return _bcast(c_skip, x) * x + _bcast(c_out, x) * f

    def features(self, x, sigma, labels=None):
        kept = []
        hook = self.unet.mid_block.register_forward_hook(lambda m, a, out: kept.append(out))
        try:
            self(x, sigma, labels)
        finally:
            hook.remove()
        return kept[0].mean((2, 3))


def digits_unet(n_classes: int = 10, channels: tuple = (32, 64), size: int = 8, in_channels: int = 1):
    """The small class-conditional U-Net of the digits teacher (8x8, one downsampling, attention
    at 4x4); MNIST uses (32, 64, 64) at 28x28."""
    from ..errors import require

    UNet2DModel = require("diffusers", "diffuse", "a U-Net denoiser").UNet2DModel
    down = ["DownBlock2D"] * (len(channels) - 1) + ["AttnDownBlock2D"]
    up = ["AttnUpBlock2D"] + ["UpBlock2D"] * (len(channels) - 1)
    return UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
                       block_out_channels=tuple(channels), down_block_types=tuple(down), up_block_types=tuple(up),
                       norm_num_groups=8, num_class_embeds=(n_classes + 1) if n_classes else None,
                       attention_head_dim=16, add_attention=True)


class DDPMDenoiser(Denoiser):
    """A diffusers model trained the DDPM way (x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, a
    `DDPMScheduler`/`DDIMScheduler` config) read as an EDM denoiser: sigma = sqrt((1 - abar) / abar),
    x_t = x / sqrt(1 + sigma^2), the timestep interpolated in the scheduler's log-sigma table, and
    the output turned into x0 by the scheduler's prediction_type (epsilon, sample, v_prediction).
    Lets a pretrained diffusers model (e.g. a DDPM on CIFAR-10) be the teacher on a GPU."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon", n_classes: int = 0):
        super().__init__()
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"prediction_type {prediction_type!r}: expected epsilon, sample or v_prediction")
        self.unet, self.prediction_type, self.n_classes = unet, prediction_type, n_classes
        abar = alphas_cumprod.double()
        self.register_buffer("log_sigmas", (((1 - abar) / abar).sqrt()).log())
        self.sigma_min, self.sigma_max = float(self.log_sigmas[0].exp()), float(self.log_sigmas[-1].exp())

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        ls = self.log_sigmas.to(sigma.device)
        t = torch.searchsorted(ls, sigma.double().log().clamp(ls[0], ls[-1])).clamp(1, len(ls) - 1)
        lo, hi = ls[t - 1], ls[t]
        frac = (sigma.double().log().clamp(ls[0], ls[-1]) - lo) / (hi - lo)
        return (t - 1 + frac).float()

    def forward(self, x, sigma, labels=None):
        sigma = _per_row(sigma, x)
        a = 1 / (1 + sigma**2).sqrt()                      # sqrt(abar)
        x_t = _bcast(a, x) * x
        cls = labels if self.n_classes and labels is not None else None
        out = self.unet(x_t, self.timestep(sigma), class_labels=cls).sample
        if self.prediction_type == "epsilon":
            return x - _bcast(sigma, x) * out
        if self.prediction_type == "sample":
            return out
        b = sigma * a                                      # sqrt(1 - abar)
        return _bcast(a, x) * x_t - _bcast(b, x) * out     # x0 = sqrt(abar) x_t - sqrt(1 - abar) v


class Routed(Denoiser):
    """Several denoisers, each owning a set of classes (`groups[c]` = the index of class c's model):
    MSD's students, or their fake scores. A batch is split by label, each part goes to its model."""

    def __init__(self, models: list, groups: list[int]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.register_buffer("groups", torch.tensor(groups, dtype=torch.long))
        self.n_classes, self.sigma_data = models[0].n_classes, models[0].sigma_data

    def _which(self, sigma, labels):
        if labels is None:
            raise ValueError("a routed model needs labels (it is split by class)")
        return self.groups[labels.clamp(max=len(self.groups) - 1)]

    def _route(self, fn, x, sigma, labels):
        sigma = _per_row(sigma, x)
        which = self._which(sigma, labels)
        out = None
        for k in range(len(self.models)):
            m = which == k
            if not m.any():
                continue
            part = fn(self.models[k], x[m], sigma[m], labels[m] if labels is not None else None)
            if out is None:
                out = part.new_zeros((len(x), *part.shape[1:]))
            out[m] = part
        return out

    def forward(self, x, sigma, labels=None):
        return self._route(lambda mod, *a: mod(*a), x, sigma, labels)

    def features(self, x, sigma, labels=None):
        return self._route(lambda mod, *a: mod.features(*a), x, sigma, labels)


class Phased(Routed):
    """Phased DMD's experts: expert k denoises the noise levels of phase k, bounds[k] >= sigma >
    bounds[k + 1] (bounds descending from sigma_max to 0)."""

    def __init__(self, models: list, bounds: list[float]):
        super().__init__(models, [0])
        self.register_buffer("bounds", torch.tensor(bounds, dtype=torch.float64))

    def _which(self, sigma, labels):
        inner = self.bounds[1:-1].to(sigma.device)
        return (sigma[:, None].double() <= inner[None]).sum(1)

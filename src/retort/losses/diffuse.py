"""Per-sample losses of diffusion distillation. Every function returns one value per sample `(B,)`
(the method sums, the loop divides by the global count); tensors are `(B, ...)`; sigma `(B,)`.

- `distribution_matching(x, x_real, x_fake)`: DMD / DMD2's generator loss (Yin et al. 2024,
  arXiv 2311.18828 / 2405.14867; tianweiy/DMD2 `edm_guidance.py`): with the real (teacher) and fake
  x0-predictions at the noised sample held constant,
      grad = (x_fake - x_real) / mean|x - x_real|,   L = 1/2 mean_dims (x - sg(x - grad))^2,
  so that dL/dx = grad / dims: one descent step moves x toward x_real and away from x_fake. The
  per-sample normaliser is DMD2's; non-finite entries of grad are zeroed (its nan_to_num).
- `edm_denoising(pred, x0, sigma, sigma_data)`: EDM's weighted denoising loss
  (sigma^2 + sd^2) / (sigma sd)^2 * mean_dims (pred - x0)^2 (DMD2's fake-score loss).
- `consistency(online, target, c)`: CM's distance between the online and the target network's
  outputs at adjacent levels: squared L2 (c = 0) or the pseudo-Huber sqrt(|d|^2 + c^2) - c of
  improved CT (Song & Dhariwal 2023), over the sample's dims, the mean taken per dimension.
- `gan_generator(logit_fake)`, `gan_discriminator(logit_fake, logit_real)`: the non-saturating
  GAN losses of DMD2 and GDD: softplus(-d(fake)); softplus(d(fake)) + softplus(-d(real)).
- `score_identity(d_teacher, d_fake, x_g, w)` (SiD / Uni-Instruct's l_SIM) and `f_weight(name, r)`,
  Uni-Instruct's per-sample weight h(r) of each f-divergence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _mean_dims(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(len(v), -1).mean(1)


def distribution_matching(x: torch.Tensor, x_real: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
    x_real, x_fake = x_real.detach().float(), x_fake.detach().float()
    x = x.float()
    w = _mean_dims((x.detach() - x_real).abs()).reshape(-1, *([1] * (x.dim() - 1)))
    grad = torch.nan_to_num((x_fake - x_real) / w, nan=0.0, posinf=0.0, neginf=0.0)
    return 0.5 * _mean_dims((x - (x - grad).detach()) ** 2)


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_denoising(pred: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    return edm_weight(sigma.float(), sigma_data) * _mean_dims((pred.float() - x0.float()) ** 2)


def consistency(online: torch.Tensor, target: torch.Tensor, c: float = 0.0) -> torch.Tensor:
    d2 = _mean_dims((online.float() - target.detach().float()) ** 2)
    if c == 0:
        return d2
    return (d2 + c**2).sqrt() - c


def gan_generator(logit_fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-logit_fake.float()).reshape(len(logit_fake))


def gan_discriminator(logit_fake: torch.Tensor, logit_real: torch.Tensor) -> torch.Tensor:
    return (F.softplus(logit_fake.float()) + F.softplus(-logit_real.float())).reshape(len(logit_fake))


def score_identity(d_teacher: torch.Tensor, d_fake: torch.Tensor, x_g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """SiD's generator loss with alpha = 1 (Zhou et al., ICML 2024, arXiv 2404.04057), Uni-Instruct's
    l_SIM: mean_dims (D_teacher - D_fake) . (D_fake - x_g) / w, gradients through all three (the
    denoisers' inputs carry the generator's sample); `w` the per-sample normaliser (held constant)."""
    prod = (d_teacher.float() - d_fake.float()) * (d_fake.float() - x_g.float())
    return _mean_dims(prod) / w.detach().float().reshape(len(prod))


F_DIVERGENCES = ("rkl", "fkl", "js", "chi2", "jeffrey")


def f_weight(name: str, r: torch.Tensor) -> torch.Tensor:
    """h(r) = r^2 f''(r) of Uni-Instruct's expansion ("Uni-Instruct: One-step Diffusion Model through Unified Diffusion Divergence Instruction", its eq. for the expanded f-divergence) at the density ratio
    r = p_data / q_generator: reverse KL 1, forward KL r, Jensen-Shannon r / (r + 1), chi^2 2 r^2,
    and the authors' Jeffrey mix 0.4 r + 0.6."""
    if name == "rkl":
        return torch.ones_like(r)
    if name == "fkl":
        return r
    if name == "js":
        return r / (r + 1)
    if name == "chi2":
        return 2 * r**2
    if name == "jeffrey":
        return 0.4 * r + 0.6
    raise ValueError(f"f-divergence {name!r}: expected one of {', '.join(F_DIVERGENCES)}")

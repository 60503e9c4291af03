"""What every diffusion method shares: the context it is built from (the data, the teacher as a
frozen denoiser, a fresh copy of the teacher's network for critics, the student's noise levels),
the batch stream (noise, labels and a per-micro-batch seed, so a resumed run draws exactly what
the uninterrupted one would) and the generator's forward pass with DMD2's backward simulation.

The track's keys for `Method.student_settings`: `steps` (the student's sampling steps, given) and
`sigmas` (its sampling levels, descending, which a method may replace)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from ...contract import BatchPlan, Method, micro_batches
from ..sampling import renoise, train_sigmas


@dataclass
class DiffuseContext:
    run: object
    data: object                        # retort.diffuse.data.DiffuseData
    device: torch.device
    log: Callable[[str], None]
    teacher: Callable                   # () -> the real denoiser (frozen): exact or the teacher network
    teacher_net: Callable               # () -> a fresh trainable copy of the teacher's network
    student_sigmas: list                # the student's sampling levels, descending
    student: Optional[Callable] = None  # () -> the student, unwrapped: set by `Method.bind`


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class frozen:
    """Within the block, `module`'s parameters take no gradient (a loss on its output still
    reaches its input): the generator's GAN term must not train the discriminator."""

    def __init__(self, module):
        self.params = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *a):
        for p in self.params:
            p.requires_grad_(True)
        return False


class DiffuseMethod(Method):
    """`loss(model, batch)`: `model` is the generator (a denoiser called at the student's levels);
    a batch holds `z` (noise), `labels` (or None) and `seed` (this micro-batch's randomness); the
    optimizer step is `self.step`."""

    needs_real = False  # the batch also carries real samples (`x_real`) of the batch's labels

    def __init__(self, ctx: DiffuseContext, cfg):
        super().__init__(ctx, cfg)
        self._teacher = None
        self.sigma_max = ctx.data.sigma_max
        self.levels = train_sigmas(self.sigma_max).float()  # the 1000 training levels, ascending

    def teacher_needs(self) -> tuple:
        return (("denoiser",),)

    def teacher(self):
        if self._teacher is None:
            self._teacher = freeze(self.ctx.teacher().to(self.ctx.device))
        return self._teacher

    def real_x0(self, x, sigma, labels):
        """The teacher's x0-prediction, with the run's guidance."""
        t = self.teacher()
        g = self.ctx.run.teacher.guidance
        with torch.no_grad():
            return t.guided(x, sigma, labels, g) if labels is not None and g != 1.0 else t(x, sigma, labels)

    # ------------------------------------------------------------------ data
    def batches(self, plan: BatchPlan) -> Iterator[dict]:
        """Micro-batch k of the run draws everything from seed `seed * 1_000_003 + k`."""
        data, B = self.ctx.data, plan.batch_size
        for k, _ in micro_batches(plan):
            seed = plan.seed * 1_000_003 + k
            g = torch.Generator().manual_seed(seed)
            z = torch.randn(B, *data.shape, generator=g)
            labels = data.labels(B, g)
            batch = {"z": z, "labels": labels, "seed": seed}
            if self.needs_real:
                batch["x_real"] = data.real(B, g, labels)[0]
            yield batch

    def private_records(self) -> int:
        from ...errors import ConfigError

        raise ConfigError(f"privacy.*: the diffusion track does not train under DP-SGD (method {self.name}): its "
                          "batches are noise and teacher samples, not private records, and its distribution-matching "
                          "losses mix the samples of a batch")

    def count(self, batch: dict) -> int:
        return len(batch["z"])

    @staticmethod
    def rng(batch: dict, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(int(batch["seed"]) * 31 + salt)

    def randn_like(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(x.shape, generator=gen).to(x.device, x.dtype)

    def level(self, n: int, gen: torch.Generator, lo: int = 0, hi: int = 999) -> torch.Tensor:
        """`n` noise levels drawn uniformly among training levels lo..hi (inclusive)."""
        return self.levels[torch.randint(lo, hi + 1, (n,), generator=gen)].to(self.ctx.device)

    # ------------------------------------------------------------------ the generator
    def generate(self, model, batch: dict, grad: bool = True) -> torch.Tensor:
        """The generator's sample. One step: G(sigma_max z, sigma_max). With several steps, DMD2's
        backward simulation: a random exit step i; the current generator (no gradient) runs from
        noise through the steps before i, re-noising each x0; step i carries the gradient."""
        sig = self.ctx.student_sigmas
        z, labels = batch["z"], batch["labels"]
        gen = self.rng(batch, 1)
        i = int(torch.randint(0, len(sig), (1,), generator=gen)) if len(sig) > 1 else 0
        x = z * sig[0]
        if i > 0:
            with torch.no_grad():
                x0 = renoise(model, z, sig[:i], labels, generator=gen)
            x = x0 + sig[i] * self.randn_like(x0, gen)
        with torch.set_grad_enabled(grad):
            return model(x, torch.full((len(x),), sig[i], device=x.device), labels)

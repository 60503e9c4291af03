"""What every classifier method shares: the context it is built from, the batch stream (an exact,
resumable epoch order, sharded over processes, optionally augmented) and the frozen teacher with
its cached logits.

The track's key for `Method.student_settings`: `subclasses`, the outputs per class of the student's
head (1; LELP's S)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from ...contract import BatchPlan, Method, micro_batches


@dataclass
class ClassifyContext:
    run: object
    data: object                     # retort.classify.data.Dataset
    device: torch.device
    log: Callable[[str], None]
    load_teacher: Callable           # () -> (model, meta)
    student: Optional[Callable] = None  # () -> the student, unwrapped: set by `Method.bind`


def flip_crop(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop of the image padded by `pad` zeros on each side, then a random horizontal flip
    (torchvision's RandomCrop(padding=4) + RandomHorizontalFlip, the CIFAR recipe), per image."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


class ClassifyMethod(Method):
    """A classifier method: `loss(model, batch)` sees `x`, `y`, `idx` (training-set rows) and, when
    it uses a teacher, `teacher_logits`; the optimizer step is `self.step`."""

    uses_teacher = True

    def __init__(self, ctx: ClassifyContext, cfg):
        super().__init__(ctx, cfg)
        self.x, self.y = ctx.data.split("train")
        self._teacher = None
        self._cached: Optional[torch.Tensor] = None

    def teacher_needs(self) -> tuple:
        return (("logits",),) if self.uses_teacher else ()

    # ------------------------------------------------------------------ teacher
    def teacher(self):
        if self._teacher is None:
            model, _ = self.ctx.load_teacher()
            model = model.to(self.ctx.device).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._teacher = model
        return self._teacher

    @torch.no_grad()
    def _teacher_logits(self, x: torch.Tensor, idx: torch.Tensor, augmented: bool) -> torch.Tensor:
        run = self.ctx.run
        if augmented or not run.data.cache_teacher:
            return self.teacher()(x).float()
        if self._cached is None:  # once per process: the whole training split, in batches
            from ..eval import predict

            self._cached = predict(self.teacher(), self.x, run.eval.batch_size, self.ctx.device)
        return self._cached[idx].to(x.device)

    # ------------------------------------------------------------------ data
    def _order(self, epoch: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(len(self.y), generator=g)

    def batches(self, plan: BatchPlan) -> Iterator[dict]:
        """Micro-batch k of the run (over every process) is rows k*B .. (k+1)*B of the concatenated
        per-epoch permutations; this process takes its own (`micro_batches`), so a resumed run
        continues the exact sequence from its step."""
        n, B = len(self.y), plan.batch_size
        augment = self.ctx.run.data.augment == "flip_crop"
        orders: dict[int, torch.Tensor] = {}
        for k, _ in micro_batches(plan):
            pos = torch.arange(k * B, (k + 1) * B)
            epochs = pos // n
            # the epochs this batch spans (many when n < B); keep just those, so memory stays one
            # batch's worth of orders and the next batch, which starts in the last of them, reuses it
            needed = epochs.unique().tolist()
            orders = {e: orders[e] if e in orders else self._order(e, plan.seed) for e in needed}
            idx = torch.empty(B, dtype=torch.long)
            for e in needed:
                m = epochs == e
                idx[m] = orders[e][pos[m] % n]
            yield self._batch(idx, torch.Generator().manual_seed(plan.seed * 7_919 + k) if augment else None)

    def _batch(self, idx: torch.Tensor, augment: Optional[torch.Generator]) -> dict:
        """The rows `idx` of the training split (augmented with `augment`'s draws, given one)."""
        x = self.x[idx]
        if augment is not None:
            x = flip_crop(x, augment)
        batch = {"x": x, "y": self.y[idx], "idx": idx}
        if self.uses_teacher:
            batch["teacher_logits"] = self._teacher_logits(x.to(self.ctx.device), idx, augment is not None)
        return batch

    # ------------------------------------------------------------------ DP-SGD (privacy.*)
    def private_records(self) -> int:
        """Every row of the training split is one private record (the loss is a sum over images)."""
        return len(self.y)

    def records_batch(self, rows: torch.Tensor) -> dict:
        augment = None
        if self.ctx.run.data.augment == "flip_crop":  # a function of the step and the rows: exact on resume
            augment = torch.Generator().manual_seed(self.ctx.run.seed * 7_919 + 1_000_003 * (self.step + 1) + int(rows[0]))
        return self._batch(rows, augment)

    def count(self, batch: dict) -> int:
        return len(batch["y"])

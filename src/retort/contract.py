"""The method contract the training loop drives, for every track (DESIGN.md, "The method contract").

A method is a class with a `Config` dataclass (its `method_args`), built by its track from a context
and that config, which provides
- `batches(plan)`: this process's micro-batches from optimizer step `plan.start_step` on;
- `count(batch)`: what the batch's loss sums over (tokens, sequences, images), known before the
  forward pass so the loop can normalise by the global count across accumulation steps and processes;
- `loss(model, batch) -> LossOut`: the *summed* loss over those items, and metrics;
and may provide `owned()` (trainable modules besides the student), `state_dict()` /
`load_state_dict()` (state carried across --resume) and `teacher_needs()` (what it asks of a teacher).
Nothing here knows what a student is; the language-model methods' shared parts are in
`retort.lm.methods.base`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from .losses.reduce import IGNORE


@dataclass
class BatchPlan:
    rank: int
    world: int
    accum: int
    batch_size: int
    start_step: int
    seed: int


@dataclass
class LossOut:
    loss: torch.Tensor  # summed over `count` tokens/items
    count: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Owned:
    """A trainable module a method owns beside the student (a critic, a projection, a fake-score
    network). The loop moves it to the device, gives it its own optimizer and schedule, steps it
    after every backward pass with the student's, and checkpoints weights, optimizer and schedule;
    the method reads it back from `Method.owned_modules` (prepared for the processes)."""

    module: torch.nn.Module
    lr: float | None = None               # default: train.lr
    optimizer: str | None = None          # default: train.optimizer (retort.train.optim.OPTIMIZERS)
    schedule: str = "warmup_cosine"       # or "constant"


class Method:
    name = "method"
    paper = ""
    equation = ""

    @dataclass
    class Config:
        pass

    def __init__(self, ctx, cfg):
        self.ctx, self.cfg = ctx, cfg
        self.owned_modules: dict[str, torch.nn.Module] = {}  # filled by the loop from `owned()`

    def teacher_needs(self) -> tuple:
        """What the method needs of its teacher: alternative sets of capabilities (the track's names,
        e.g. `hidden`, `score`), any one of which will do; () when it uses no teacher. The track
        checks it before step 0."""
        return ()

    def owned(self) -> dict[str, Owned]:
        """Trainable modules this method owns besides the student (none by default)."""
        return {}

    def state_dict(self) -> dict:
        """What the method must carry across a resume besides owned modules (an EMA reference,
        counters): tensors (saved as safetensors) and JSON values, keyed by name."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned, before the first batch of a resumed run."""

    def batches(self, plan: BatchPlan) -> Iterator[dict]:
        raise NotImplementedError

    def count(self, batch: dict) -> int:
        """Label tokens by default (next-token prediction: labels shifted by one, -100 masked)."""
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss(self, model, batch: dict) -> LossOut:
        raise NotImplementedError

"""The method contract: everything the training loop and the tracks ask of a method, for every track.

A method is a class with a `Config` dataclass (its `method_args`), built by its track from a context
and that config. It must provide
- `batches(plan)`: this process's micro-batches from optimizer step `plan.start_step` on (the
  micro-batches that are this process's: `micro_batches(plan)`);
- `count(batch)`: what the batch's loss sums over (tokens, sequences, images), known before the
  forward pass so the loop can normalise by the global count across accumulation steps and processes;
- `loss(model, batch) -> LossOut`: the *summed* loss over those items, and metrics.
Everything else it may provide is declared on `Method` below with its default, and every caller calls
it unconditionally: hooks the track calls before the method is built (classmethods taking the typed
config: `check_task`, `default_student`, `prepare_student`, `student_settings`), what it asks of a
teacher (`teacher_needs`, `needs_teacher_weights`), its own trainable modules (`owned`) and which
optimizers step when (`trains`), the step counter (`on_step`), the student it may read (`bind`,
`student`), state carried across a resume (`state_dict`, `load_state_dict`), and DP-SGD's
records (`private_records`, `records_batch`: the batches of a run with `privacy.*` set).

Nothing here knows what a student is; each track's methods share a base in its `methods/base.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Iterator, Optional

import torch

from .errors import ConfigError
from .losses.reduce import IGNORE

STUDENT = "student"  # the student's name among the optimizers (`Method.trains`); owned modules use theirs


@dataclass
class BatchPlan:
    rank: int
    world: int
    accum: int
    batch_size: int
    start_step: int
    seed: int


def micro_batches(plan) -> Iterator[tuple[int, int]]:
    """(k, step) for each micro-batch of this process, in order, from optimizer step `plan.start_step`
    on, for ever. Micro-batch `a` (0 .. accum - 1) of process `rank` at optimizer step `step` is the
    run's global micro-batch k = (step * accum + a) * world + rank: the processes take turns, so one
    process with accum=2 and two with accum=1 see the same micro-batches at every step, and a resumed
    run continues the sequence at its step. `plan`: a `BatchPlan` (or anything with its fields)."""
    step = plan.start_step
    while True:
        for a in range(plan.accum):
            yield (step * plan.accum + a) * plan.world + plan.rank, step
        step += 1


@dataclass
class LossOut:
    loss: torch.Tensor  # summed over `count` tokens/items
    count: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Owned:
    """A trainable module a method owns beside the student (a critic, a projection, a fake-score
    network). The loop moves it to the device, gives it its own optimizer and schedule, steps it
    after every backward pass with the student's (where `Method.trains` says so), and checkpoints
    weights, optimizer and schedule; the method reads it back from `Method.owned_modules` (prepared
    for the processes: call it, as `loss` calls its model)."""

    module: torch.nn.Module
    lr: float | None = None               # default: train.lr
    optimizer: str | None = None          # default: train.optimizer (retort.train.optim.OPTIMIZERS)
    schedule: str = "warmup_cosine"       # or "constant"


class Method:
    """The contract. `loss(model, batch)` receives the student as the loop prepared it for the
    processes (possibly wrapped for data-parallel training): call it, never read its attributes; what
    needs the module itself (its config, its own methods, sampling from it) reads `self.student()`.

    The loop's order: build (`__init__`), `bind`, `owned`, `load_state_dict` (a resumed run),
    `on_step(start_step)`, `batches(plan)`; then per optimizer step: `count` and `loss` for each
    micro-batch, backward, step the optimizers `trains(step)` names, `on_step(step + 1)`. Gradients
    are set to None after every step, so a parameter that took none in a step (an expert outside
    its phase) is left as it is by its optimizer."""

    name = "method"
    paper = ""
    equation = ""

    @dataclass
    class Config:
        pass

    def __init__(self, ctx, cfg):
        self.ctx, self.cfg = ctx, cfg
        self.owned_modules: dict[str, torch.nn.Module] = {}  # filled by the loop from `owned()`
        self.step = 0  # the optimizer step the next `loss` calls belong to (`on_step`)
        self._student: Optional[Callable[[], torch.nn.Module]] = None

    # ------------------------------------------------------------------ before the method is built
    @classmethod
    def check_task(cls, cfg, task) -> None:
        """Refuse, with a ConfigError before the student is built, a task this method cannot train
        on; accepts every task by default."""

    @classmethod
    def default_student(cls, cfg, task) -> Optional[str]:
        """The student to build where the run leaves `student.name` at the track's default (a method
        whose student cannot be the teacher's architecture); None by default: the track's."""
        return None

    @classmethod
    def prepare_student(cls, model: torch.nn.Module, cfg, task, seed: int) -> torch.nn.Module:
        """The student as this method trains it, from the one the track loaded (new or a checkpoint's),
        before the optimizer sees it: wrapped (several students), partly frozen, or refused."""
        return model

    @classmethod
    def student_settings(cls, cfg, task, settings: dict) -> dict:
        """The track's choices for the student, `settings` (keys the track documents), with this
        method's changes; unchanged by default."""
        return settings

    # ------------------------------------------------------------------ teacher and modules
    def teacher_needs(self) -> tuple:
        """What the method needs of its teacher: alternative sets of capabilities (the track's names,
        e.g. `hidden`, `score`), any one of which will do; () when it uses no teacher. The track
        checks it before step 0."""
        return ()

    def needs_teacher_weights(self) -> bool:
        """Whether the method copies the teacher's weights (a critic started as the teacher), so the
        teacher must be a network the track can load; False by default."""
        return False

    def owned(self) -> dict[str, Owned]:
        """Trainable modules this method owns besides the student, by name (not `STUDENT`); none by default."""
        return {}

    def trains(self, step: int) -> Collection[str]:
        """The optimizers that step at optimizer step `step` (0-based): `STUDENT` and/or names from
        `owned()`; all of them by default.

        The others skip the step (no optimizer update, whatever their gradients; their schedules
        still advance and their gradients are zeroed): a two time-scale rule (a critic every step,
        the generator every `ratio`-th) says so here rather than relying on gradients left as None.
        `loss` can ask it too (`STUDENT in self.trains(self.step)`) to skip the student's graph."""
        return {STUDENT, *self.owned_modules}

    # ------------------------------------------------------------------ the loop's state
    def bind(self, student: Callable[[], torch.nn.Module]) -> None:
        """Called by the loop once the student is prepared, before `owned()`: `student()` returns it
        unwrapped. Also sets the context's `student` field, for code that holds only the context."""
        self._student = student
        self.ctx.student = student

    def student(self) -> Optional[torch.nn.Module]:
        """The student being trained, unwrapped: read its attributes, call its methods, sample from
        it. None before `bind`."""
        return self._student() if self._student is not None else None

    def on_step(self, step: int) -> None:
        """The optimizer step the next `loss` calls belong to: called with the start step (0, or a
        resumed run's) before the first batch, and after every optimizer step with the new count.

        After means: every optimizer in `trains` has stepped, every schedule advanced and every
        gradient been zeroed, and before the loop's weight average, logging, evaluation and
        checkpoint of that step. Overrides call `super().on_step(step)`, which sets `self.step`."""
        self.step = step

    def state_dict(self) -> dict:
        """What the method must carry across a resume besides owned modules (an EMA reference,
        counters): tensors (saved as safetensors) and JSON values, keyed by name."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned, before the first batch of a resumed run."""

    # ------------------------------------------------------------------ data and loss
    def batches(self, plan: BatchPlan) -> Iterator[dict]:
        raise NotImplementedError

    # ------------------------------------------------------------------ DP-SGD (`privacy.*`)
    def private_records(self) -> int:
        """Under `privacy.*` (`retort.train.private`): how many private training records the method
        reads (the rows of its data: an image, an example, a trace), which Poisson sampling draws each
        step's batch from instead of `batches`. Only where `loss` sums one term per record of its
        batch and no term reads two records (the per-record gradient is what DP-SGD clips), and one
        record is one row (not several examples cut from it). Refuse with a ConfigError saying why
        (the default): the loop asks before step 0."""
        raise ConfigError(f"privacy.*: method {self.name} does not train under DP-SGD: its batches are not built "
                          "from single private records (it defines no private_records)")

    def records_batch(self, rows: torch.Tensor) -> dict:
        """Under `privacy.*`: the micro-batch of records `rows` (indices into 0 .. private_records() - 1,
        at least one), as `batches` yields them."""
        raise NotImplementedError

    def count(self, batch: dict) -> int:
        """Label tokens by default (next-token prediction: labels shifted by one, -100 masked). Under
        `privacy.*` the loop does not divide by it (the DPOptimizer divides by the expected batch)."""
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss(self, model, batch: dict) -> LossOut:
        raise NotImplementedError

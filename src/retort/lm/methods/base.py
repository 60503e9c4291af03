"""What language-model methods share: their context (`MethodContext`), the off-policy batching
(`OffPolicy`) and token log-prob helpers. The contract itself (`Method`, `BatchPlan`, `LossOut`,
`Owned`: `batches`, `count`, `loss` and the optional hooks) is track-independent and lives in
`retort.contract`; a language-model method is built from a `MethodContext` and its own config
dataclass.

Off-policy methods over a fixed list of encoded examples can subclass `OffPolicy`, which shards a
deterministic, length-bucketed order so that resuming at a step and changing the number of
processes (at the same global batch) both see exactly the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ...contract import BatchPlan, LossOut, Method, Owned, micro_batches
from ..data.collate import IGNORE, Encoded, bucketed_order, collate

__all__ = ["BatchPlan", "LossOut", "Method", "MethodContext", "OffPolicy", "Owned", "sequence_logps",
           "token_nll_sum"]


MOST = 0.5  # share of the data whose loss to data.max_len stops a run instead of a warning


@dataclass
class MethodContext:
    """What a method may use: the run config, task, student tokenizer, and lazy teacher loading."""

    run: Any
    task: Any
    tokenizer: Any
    load_teacher: Any = None  # () -> the run's Teacher (retort.lm.teachers), opened and frozen
    device: Any = "cpu"
    student: Any = None  # () -> the student, unwrapped: set by `Method.bind` (on-policy methods sample from it)
    load_initial_student: Any = None  # () -> (model, tokenizer): the student as the run started it
    log: Any = None  # (message) -> None: a line for the user (the main process's console)

    def say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def train_rows(self) -> list:
        """The task's training examples, each distinct one once: `data.n_train` of a procedural
        task, or all of a file's train split (at most n_train); `cycle` repeats them afterwards,
        so a long file row is encoded once, not once per repetition."""
        from ..tasks import require_examples

        run = self.run
        n = require_examples(self.task, "train", run.data.n_train, "train", run.seed)
        return self.task.examples("train", n, run.seed)

    def cycle(self, items: list) -> list:
        """`items` repeated up to `data.n_train` for a finite task (as its own `examples` would)."""
        if self.task.size("train") is None or not items:
            return items
        n = self.run.data.n_train
        return [items[i % len(items)] for i in range(n)]

    def dropped(self, dropped: int, total: int, what: str) -> None:
        """Report rows dropped for `data.max_len`; refuse to train when most of the data would be."""
        if not dropped:
            return
        from ...errors import DataError

        max_len = self.run.data.max_len
        msg = f"{dropped} of {total} {what} ({100 * dropped / total:.0f}%) are longer than data.max_len={max_len} tokens"
        if dropped > MOST * total:
            raise DataError(f"{msg} and would be dropped; raise data.max_len (rows are dropped, never truncated)")
        self.say(f"{msg}; dropped")

    def frozen_initial_student(self):
        """The student as the run started it, frozen (OPSD's fixed teacher, DPO's reference): for a
        LoRA student the student itself with its adapters disabled (no second copy of the weights),
        else a second copy loaded as the run first loaded it."""
        from ..models.lora import AdaptersDisabled, is_lora

        student = self.student() if self.student is not None else None  # unwrapped
        if student is not None and is_lora(student):
            return AdaptersDisabled(student)
        initial, _ = self.load_initial_student()
        return initial.to(self.device).eval().requires_grad_(False)


def token_nll_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over label tokens (labels -100 are skipped)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, int((labels != IGNORE).sum())


def sequence_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of completion-token log-probs, completion token count) per sequence of the batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    # at least float32 (bf16/fp16 models), float64 kept as it is
    lp = -F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)).flatten(0, 1),
                          labels.flatten(), ignore_index=IGNORE,
                          reduction="none").view(labels.shape)
    return (lp * mask).sum(-1), mask.sum(-1)


class OffPolicy(Method):
    """Micro-batches from a fixed list of `Encoded` examples, sharded deterministically.

    Micro-batch `a` of process `r` at optimizer step `s` is chunk `(s * accum + a) * world + r` of a
    length-bucketed order that is reshuffled each epoch (`retort.contract.micro_batches`). One
    process with accum=2 and two processes with accum=1 therefore train on the same examples at
    every step.
    """

    def examples(self) -> list[Encoded]:
        raise NotImplementedError

    def batches(self, plan: BatchPlan) -> Iterator[dict]:
        pad = self.ctx.tokenizer.pad_token_id
        for _, items in self.example_batches(plan):
            yield collate(items, pad)

    # ------------------------------------------------------------------ DP-SGD (privacy.*)
    def private_records(self) -> int:
        """The distinct examples: each is one private record (`ctx.cycle` repeats a finite task's
        rows up to data.n_train; under DP each is drawn on its own, never twice as two records)."""
        return len(self._records())

    def records_batch(self, rows: torch.Tensor) -> dict:
        records = self._records()
        return collate([records[i] for i in rows.tolist()], self.ctx.tokenizer.pad_token_id)

    def _records(self) -> list[Encoded]:
        if getattr(self, "_private", None) is None:
            self._private = list({id(x): x for x in self.examples()}.values())
        return self._private

    def example_batches(self, plan: BatchPlan) -> Iterator[tuple[int, list[Encoded]]]:
        """(chunk index, examples) of each micro-batch, in the order described above."""
        data = self.examples()
        if not data:
            raise ValueError("no training examples")
        lengths = [len(x.input_ids) for x in data]
        per_epoch = max(1, len(data) // plan.batch_size)
        epochs: dict[int, list[list[int]]] = {}
        for chunk, _ in micro_batches(plan):
            epoch, pos = divmod(chunk, per_epoch)
            if epoch not in epochs:
                epochs = {epoch: bucketed_order(lengths, plan.batch_size, plan.seed + epoch)}
            yield chunk, [data[i] for i in epochs[epoch][pos % len(epochs[epoch])]]

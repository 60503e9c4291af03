"""`sft`: supervised fine-tuning (sequence-level distillation when the data are teacher traces).

Loss: sum over completion tokens of -log p_theta(y_t | x, y_<t), normalised globally by the loop.
Sequence-level KD is Kim & Rush, "Sequence-Level Knowledge Distillation" (arXiv:1606.07947):
train the student on the teacher's outputs instead of the references.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import LossOut, OffPolicy, token_nll_sum
from .examples import data_examples


class SFT(OffPolicy):
    name = "sft"
    paper = "Kim & Rush 2016, Sequence-Level Knowledge Distillation, arXiv:1606.07947"
    equation = "L = -sum_t log p_theta(y_t | x, y_<t) over completion tokens"

    @dataclass
    class Config:
        pass

    def examples(self):
        return data_examples(self.ctx)

    def loss(self, model, batch) -> LossOut:
        loss, n = token_nll_sum(model, batch)
        return LossOut(loss, n)

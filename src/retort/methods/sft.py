"""`sft`: supervised fine-tuning (sequence-level distillation when the data are teacher traces).

Loss: sum over completion tokens of -log p_theta(y_t | x, y_<t), normalised globally by the loop.
Sequence-level KD is Kim & Rush, "Sequence-Level Knowledge Distillation" (arXiv:1606.07947):
train the student on the teacher's outputs instead of the references.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.collate import encode_examples
from .base import LossOut, OffPolicy, token_nll_sum


class SFT(OffPolicy):
    name = "sft"
    paper = "Kim & Rush 2016, Sequence-Level Knowledge Distillation, arXiv:1606.07947"
    equation = "L = -sum_t log p_theta(y_t | x, y_<t) over completion tokens"

    @dataclass
    class Config:
        pass

    def examples(self):
        run, tok = self.ctx.run, self.ctx.tokenizer
        rows = self.ctx.task.examples("train", run.data.n_train, run.seed)
        if run.data.source == "answers":
            pairs = [(ex.prompt, ex.answer_completion) for ex in rows]
        else:
            pairs = [(ex.prompt, ex.solution) for ex in rows if ex.solution is not None]
        encoded = encode_examples(tok, [p for p, _ in pairs], [c for _, c in pairs])
        out = [enc for enc in encoded if len(enc.input_ids) <= run.data.max_len]
        if not out:
            from ..errors import DataError

            raise DataError(
                f"no training examples for data.source={run.data.source} "
                f"(rows without a solution, or longer than data.max_len={run.data.max_len})"
            )
        return out

    def loss(self, model, batch) -> LossOut:
        loss, n = token_nll_sum(model, batch)
        return LossOut(loss, n)

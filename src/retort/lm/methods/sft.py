"""`sft`: supervised fine-tuning (sequence-level distillation when the data are teacher traces).

Loss: sum over completion tokens of -log p_theta(y_t | x, y_<t), normalised globally by the loop.
Sequence-level KD is Kim & Rush, "Sequence-Level Knowledge Distillation" (arXiv:1606.07947):
train the student on the teacher's outputs instead of the references.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data import topk as topk_codec
from ..data.collate import Encoded, TraceEncoder, encode_within
from ..data.traces import read_manifest, read_traces
from ...errors import DataError
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
        if run.data.source == "traces":
            return trace_examples(run.data, tok, ctx=self.ctx)
        rows = self.ctx.train_rows()
        if run.data.source != "answers":
            rows = [ex for ex in rows if ex.solution is not None]
        if run.data.source == "solutions" and run.data.skills > 0:
            extra = self.ctx.task.skill_examples(round(len(rows) * run.data.skills / (1 - run.data.skills)), run.seed)
            if not extra:
                raise DataError(f"data.skills={run.data.skills}: task {self.ctx.task.name} has no skill examples")
            rows = [r for pair in zip(rows, extra) for r in pair] + rows[len(extra):] + extra[len(rows):]
        completions = [ex.answer_completion if run.data.source == "answers" else ex.solution for ex in rows]
        encoded = encode_within(tok, [ex.prompt for ex in rows], completions, run.data.max_len)
        out = []
        for enc, ex in zip(encoded, rows):
            if enc is not None:
                enc.prompt, enc.answer, enc.solution = ex.prompt, ex.answer, ex.solution
                out.append(enc)
        self.ctx.dropped(len(rows) - len(out), len(rows), "training rows")
        if not out:
            raise DataError(
                f"no training examples for data.source={run.data.source} "
                f"(rows without a solution, or longer than data.max_len={run.data.max_len})"
            )
        return self.ctx.cycle(out)

    def loss(self, model, batch) -> LossOut:
        loss, n = token_nll_sum(model, batch)
        return LossOut(loss, n)


def trace_examples(data, tok, *, with_topk: bool = False, ctx=None) -> list[Encoded]:
    """Training pairs from a trace set (`TraceEncoder`): correct-only by default. Rows longer than
    `data.max_len` are dropped, counted through `ctx.dropped` when a method context is given."""
    manifest = read_manifest(data.traces)
    columns = ["prompt", "completion", "completion_ids", "correct", "finish_reason", "reference", "messages"]
    if with_topk:
        if not manifest["params"]["sampling"].get("topk"):
            raise DataError(f"{data.traces}: traces have no teacher top-k (made without sampling.topk); "
                            "rerun `retort traces` with sampling.topk=K, or use the online teacher")
        columns.append("topk")
    table = read_traces(data.traces, columns=columns)
    cols = table.to_pydict()
    keep = [i for i, ok in enumerate(cols["correct"]) if ok or data.trace_filter == "all"][:data.n_train]
    if not keep:
        raise DataError(f"{data.traces}: no traces pass data.trace_filter={data.trace_filter} "
                        f"({table.num_rows} rows, none correct); try data.trace_filter=all")
    encode = TraceEncoder(manifest, cols, tok)
    out = []
    for i in keep:
        enc = encode.encoded(i)
        enc.prompt, enc.answer = cols["prompt"][i], cols["reference"][i]
        if with_topk:
            if cols["messages"][i] is not None:
                raise DataError(f"{data.traces}: offline top-k is stored for single-turn rows only")
            if not encode.same_vocab:
                raise DataError(f"{data.traces}: offline top-k needs the teacher's tokenizer (the student's differs)")
            enc.topk_ids, enc.topk_logprobs = topk_codec.decode(cols["topk"][i])
        if len(enc.input_ids) <= data.max_len:
            out.append(enc)
    if ctx is not None and out:
        ctx.dropped(len(keep) - len(out), len(keep), "traces")
    if not out:
        raise DataError(f"{data.traces}: every trace is longer than data.max_len={data.max_len}")
    return out

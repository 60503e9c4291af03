"""The encoded training examples the off-policy methods read (`data.source`): a task's worked
solutions or bare answers (`data_examples`), or a trace set's rows (`trace_examples`, with the
teacher's stored top-k for offline KD). Every row is encoded whole or dropped (`data.max_len`),
never truncated; the drops are reported through the method context."""

from __future__ import annotations

from ...errors import DataError
from ..data import topk as topk_codec
from ..data.collate import Encoded, TraceEncoder, encode_messages, encode_within
from ..data.traces import read_manifest, read_traces
from ..tasks import Prompt


def data_examples(ctx) -> list[Encoded]:
    """The examples of `ctx.run.data`: prompt + solution (`solutions`, with `data.skills` of the
    task's skill examples interleaved), prompt + answer (`answers`), or correct traces (`traces`)."""
    run, tok = ctx.run, ctx.tokenizer
    if run.data.source == "traces":
        return trace_examples(run.data, tok, ctx=ctx)
    rows = ctx.train_rows()
    if run.data.source != "answers":
        rows = [ex for ex in rows if ex.solution is not None]
    if run.data.source == "solutions" and run.data.skills > 0:
        extra = ctx.task.skill_examples(round(len(rows) * run.data.skills / (1 - run.data.skills)), run.seed)
        if not extra:
            raise DataError(f"data.skills={run.data.skills}: task {ctx.task.name} has no skill examples")
        rows = [r for pair in zip(rows, extra) for r in pair] + rows[len(extra):] + extra[len(rows):]
    completions = [ctx.task.completion_of(ex.answer) if run.data.source == "answers" else ex.solution for ex in rows]
    encoded = encode_within(tok, [ex.prompt for ex in rows], completions, run.data.max_len)
    if run.data.source == "solutions":  # worked solutions that are conversations (an agent's): by their roles
        for i, ex in enumerate(rows):
            if ex.messages:
                system = getattr(ex.prompt, "system", None)
                enc = encode_messages(tok, [*([{"role": "system", "content": system}] if system else []),
                                            {"role": "user", "content": str(ex.prompt)}, *ex.messages])
                encoded[i] = enc if len(enc.input_ids) <= run.data.max_len else None
    out = []
    for enc, ex in zip(encoded, rows):
        if enc is not None:
            enc.prompt, enc.answer, enc.solution = ex.prompt, ex.answer, ex.solution
            out.append(enc)
    ctx.dropped(len(rows) - len(out), len(rows), "training rows")
    if not out:
        raise DataError(
            f"no training examples for data.source={run.data.source} "
            f"(rows without a solution, or longer than data.max_len={run.data.max_len})"
        )
    return ctx.cycle(out)


def trace_examples(data, tok, *, with_topk: bool = False, ctx=None, cross: str = "off") -> list[Encoded]:
    """Training pairs from a trace set (`TraceEncoder`): correct-only by default. Rows longer than
    `data.max_len` are dropped, counted through `ctx.dropped` when a method context is given.
    `cross` (a `method_args.cross_tokenizer`): with the top-k of a teacher of another tokenizer
    (or uld/hybrid whatever the tokenizer), each row keeps the teacher's own completion ids, which
    its top-k rows follow (`Encoded.teacher_ids`)."""
    manifest = read_manifest(data.traces)
    columns = ["prompt", "completion", "completion_ids", "correct", "finish_reason", "reference", "messages"]
    if with_topk:
        sampled = manifest["params"]
        while "sampling" not in sampled and isinstance(sampled.get("source_params"), dict):
            sampled = sampled["source_params"]  # a curated set (`retort curate --correct`) keeps its source's
        if not sampled.get("sampling", {}).get("topk"):
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
    out, t_tok = [], None
    for i in keep:
        enc = encode.encoded(i)
        enc.prompt, enc.answer = Prompt(cols["prompt"][i], encode.system), cols["reference"][i]
        if with_topk:
            if cols["messages"][i] is not None:
                raise DataError(f"{data.traces}: offline top-k is stored for single-turn rows only")
            if not encode.same_vocab and cross == "off":
                raise DataError(f"{data.traces}: offline top-k needs the teacher's tokenizer (the student's differs); "
                                "or distill across tokenizers with method_args.cross_tokenizer=hybrid (or uld, auto)")
            enc.topk_ids, enc.topk_logprobs = topk_codec.decode(cols["topk"][i])
            if cross in ("uld", "hybrid") or (cross == "auto" and not encode.same_vocab):
                if t_tok is None:
                    t_tok = teacher_tokenizer(data, manifest)
                t_eos = t_tok.eos_token_id
                stop = cols["finish_reason"][i] == "stop" and t_eos is not None
                enc.teacher_ids = list(cols["completion_ids"][i]) + ([t_eos] if stop else [])
        if len(enc.input_ids) <= data.max_len:
            out.append(enc)
    if ctx is not None and out:
        ctx.dropped(len(keep) - len(out), len(keep), "traces")
    if not out:
        raise DataError(f"{data.traces}: every trace is longer than data.max_len={data.max_len}")
    return out


def teacher_tokenizer(data, manifest: dict | None = None):
    """The tokenizer a trace set's token ids are in (`trace_tokenizer`)."""
    from ..teachers.store import trace_tokenizer

    manifest = read_manifest(data.traces) if manifest is None else manifest
    return trace_tokenizer(manifest, data.traces, purpose="its top-k across tokenizers")


__all__ = ["data_examples", "teacher_tokenizer", "trace_examples"]

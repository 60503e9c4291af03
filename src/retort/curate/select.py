"""Filters that turn one trace set into a smaller one: correct-only (rejection sampling), a length
cap, and the first K correct samples per prompt. The result is a new trace directory in the same
format, whose manifest names its source and the filters applied."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from .. import __version__
from ..data.traces import TraceWriter, read_manifest, read_traces
from ..errors import DataError
from .progress import CurateProgress
from .stats import trace_stats

FILTERS = ("correct", "max_tokens", "first_k_correct")


def filter_traces(src: str, out: str, *, correct_only: bool = False, max_tokens: Optional[int] = None,
                  first_k_correct: Optional[int] = None, pairs: Optional[int] = None,
                  das_student: Optional[str] = None, das_keep: int = 1, das_delta: float = 1.0,
                  batch_size: int = 64, shard_rows: int = 4096, console=None) -> dict:
    """`pairs=K`: keep only the traces in positive/negative pairs (`retort.curate.pairs`, at most K
    per prompt; 0 = all), after the other filters — the trace set the pair methods learn from.
    `das_student=MODEL`: DASD's divergence-aware selection (`retort.curate.das`), the `das_keep`
    best-scoring traces per prompt under that student, after the other filters."""
    if not (correct_only or max_tokens or first_k_correct or pairs is not None or das_student):
        raise DataError("curate: name at least one filter (--correct, --max-tokens, --first-k-correct, --pairs, "
                        "--das)")
    if correct_only and pairs is not None:
        raise DataError("curate: --pairs needs the incorrect traces too; drop --correct")
    if das_student and (pairs is not None or first_k_correct):
        raise DataError("curate: --das selects its own traces per prompt; it does not combine with --pairs or "
                        "--first-k-correct")
    if das_keep < 1 or das_delta < 0:
        raise DataError(f"curate: --das-keep must be >= 1 and --das-delta >= 0 (got {das_keep}, {das_delta})")
    if Path(out).resolve() == Path(src).resolve():
        raise DataError("curate: --out must differ from the input trace directory")
    source = read_manifest(src)
    table = read_traces(src)
    if correct_only:
        table = table.filter(pc.equal(table["correct"], True))
    if max_tokens is not None:
        table = table.filter(pc.less_equal(table["n_tokens"], max_tokens))
    if first_k_correct is not None:
        keep, seen = [], {}
        for i, (pid, ok) in enumerate(zip(table["prompt_id"].to_pylist(), table["correct"].to_pylist())):
            if ok and seen.get(pid, 0) < first_k_correct:
                seen[pid] = seen.get(pid, 0) + 1
                keep.append(i)
        table = table.take(pa.array(keep, type=pa.int64()))
    if pairs is not None:
        from .pairs import pair_rows

        matched = pair_rows(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(),
                            table["correct"].to_pylist(), pairs)
        if not matched:
            raise DataError(f"curate --pairs: no prompt in {src} has both a correct and an incorrect trace "
                            "(sample more per prompt: sampling.n >= 2)")
        table = table.take(pa.array(sorted(i for pair in matched for i in pair), type=pa.int64()))
    das_stats = None
    if das_student:
        table, das_stats = _das_select(source, table, das_student, das_keep, das_delta, batch_size, console)
    applied = {"correct_only": correct_only, "max_tokens": max_tokens, "first_k_correct": first_k_correct,
               "pairs": pairs}
    if das_student:
        applied["das"] = {"student": das_student, "student_weights_sha256": das_stats.pop("student_weights_sha256"),
                          "keep": das_keep, "delta": das_delta}
    params = {"source": str(Path(src).resolve()), "source_params": source["params"], "filters": applied}
    counts = {i: min(shard_rows, table.num_rows - i * shard_rows)
              for i in range(max(1, -(-table.num_rows // shard_rows)))}
    if Path(out).exists():
        # a filter is cheap to redo; never mix two results in one directory — but only ever
        # replace a trace directory, never an unrelated one
        if not (Path(out) / "manifest.json").is_file() and any(Path(out).iterdir()):
            raise DataError(f"curate: {out} exists and is not a trace directory; choose another --out")
        shutil.rmtree(out)
    meta = {k: source.get(k) for k in ("task", "teacher", "tokenizer_sha256", "vocab_size")}
    meta.update(retort_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    writer = TraceWriter(out, params, meta, counts)
    for i, rows in counts.items():
        writer.write_shard(i, table.slice(i * shard_rows, rows))
    writer.finish({**trace_stats(table), **({"das": das_stats} if das_stats else {})})
    return writer.manifest["stats"]


def _das_select(source: dict, table: pa.Table, student: str, keep: int, delta: float, batch_size: int, console):
    import numpy as np

    from ..config import ModelConfig
    from ..methods.sft import TraceEncoder
    from ..models import load_model, load_tokenizer
    from ..traces import weights_sha256
    from .das import score_traces, select_top

    if "teacher" not in source["params"]:
        raise DataError("curate --das: the trace set's manifest does not name its teacher (whose tokenizer "
                        "splits the stored log-probs into sentences); use the set `retort traces` wrote")
    teacher_tok = load_tokenizer(ModelConfig(**source["params"]["teacher"]))
    model, tok = load_model(ModelConfig(name=student))
    cols = table.to_pydict()
    rows = list(range(table.num_rows))
    with CurateProgress(console, "DAS scoring", len(rows), "traces") as progress:
        scores = score_traces(cols, rows, teacher_tok, model, tok, TraceEncoder(source, cols, tok), delta=delta,
                              batch_size=batch_size, progress=progress)
    kept = select_top(cols["prompt_id"], cols["sample_idx"], rows, scores, keep)
    s_all = np.array([scores[i].score for i in rows])
    s_kept = np.array([scores[i].score for i in kept])
    sent = sum(scores[i].sentences for i in rows)
    stats = {"score_mean_all": float(s_all.mean()) if rows else 0.0,
             "score_mean_kept": float(s_kept.mean()) if kept else 0.0,
             "teacher_sentence_share": sum(scores[i].teacher_sentences for i in rows) / max(1, sent),
             "student_sentence_share": sum(scores[i].student_sentences for i in rows) / max(1, sent),
             "sentences": sent, "student_weights_sha256": weights_sha256(model)}
    return table.take(pa.array(kept, type=pa.int64())), stats


def format_stats(stats: dict) -> str:
    return json.dumps(stats, indent=2)

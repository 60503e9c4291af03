"""Filters that turn one trace set into a smaller one (`filter_traces`): one teacher's rows,
correct-only (rejection sampling), a length cap, the first K correct samples per prompt,
positive/negative pairs, a perplexity cap under a reference model, templated traces dropped, the
most diverse correct traces, DASD's divergence-aware selection. The result is a new trace
directory in the same format (written by `retort.lm.curate.output`), whose manifest names its
source and the filters applied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from ...errors import DataError
from ..data.traces import read_manifest, read_traces, unfinished_note
from .output import check_output, holds_out, open_output
from .progress import CurateProgress
from .stats import trace_stats

FILTERS = ("teacher", "correct", "max_tokens", "first_k_correct", "pairs", "das", "max_ppl", "templates", "diverse")


def parse_max_ppl(spec: str) -> dict:
    """`--max-ppl`: "20" (every teacher) or "TEACHER=20,OTHER=35" ("*" for the rest)."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, eq, value = part.rpartition("=")
        name = name.strip() if eq else "*"
        try:
            limit = float(value)
        except ValueError:
            limit = float("nan")
        if not limit > 0 or limit == float("inf") or not name:
            raise DataError(f"curate --max-ppl: expected a perplexity > 0 or TEACHER=PPL, got {part!r}")
        out[name] = limit
    if not out:
        raise DataError("curate --max-ppl: expected a perplexity > 0 or TEACHER=PPL,...")
    return out


@holds_out
def filter_traces(src: str, out: str, *, correct_only: bool = False, agent_filter: bool = False,
                  max_tokens: Optional[int] = None,
                  first_k_correct: Optional[int] = None, pairs: Optional[int] = None,
                  das_student: Optional[str] = None, das_keep: int = 1, das_delta: float = 1.0,
                  das_rule: str = "das", seed: int = 0,
                  templates: Optional[tuple[int, int]] = None, diverse: Optional[int] = None,
                  max_ppl: Optional[dict] = None, ppl_model: Optional[str] = None, teacher: Optional[str] = None,
                  batch_size: int = 64, shard_rows: int = 4096, overwrite: bool = False, console=None) -> dict:
    """`pairs=K`: keep only the traces in positive/negative pairs (`retort.lm.data.pairs`, at most K
    per prompt; 0 = all), after the other filters — the trace set the pair methods learn from.
    `das_student=MODEL`: DASD's divergence-aware selection (`retort.lm.curate.das`), the `das_keep`
    best-scoring traces per prompt under that student, after the other filters.
    `out` must be new or empty; a trace set there is replaced only with `overwrite` (`retort.lm.curate.output`)."""
    if not (correct_only or max_tokens or first_k_correct or pairs is not None or das_student or templates
            or diverse or max_ppl or teacher or agent_filter):
        raise DataError("curate: name at least one filter (--teacher, --correct, --agent-filter, --max-tokens, "
                        "--first-k-correct, --pairs, --das, --max-ppl, --drop-templates, --diverse)")
    if max_ppl and not ppl_model:
        raise DataError("curate --max-ppl: name the reference model the perplexity is measured under (--ref-model)")
    if diverse is not None and (pairs is not None or das_student or first_k_correct):
        raise DataError("curate: --diverse picks its own correct traces per prompt; it does not combine with "
                        "--pairs, --das or --first-k-correct")
    if correct_only and pairs is not None:
        raise DataError("curate: --pairs needs the incorrect traces too; drop --correct")
    if das_student and (pairs is not None or first_k_correct):
        raise DataError("curate: --das selects its own traces per prompt; it does not combine with --pairs or "
                        "--first-k-correct")
    if das_keep < 1 or das_delta < 0:
        raise DataError(f"curate: --das-keep must be >= 1 and --das-delta >= 0 (got {das_keep}, {das_delta})")
    check_output(src, out, overwrite=overwrite)
    source = read_manifest(src)
    table = read_traces(src, allow_incomplete=True)
    unfinished = unfinished_note(src, source, table)
    if unfinished and console is not None:
        console.print(f"curate: {unfinished}")
    if teacher:
        names = table["teacher"].to_pylist() if "teacher" in table.column_names else []
        if teacher not in names:
            raise DataError(f"curate --teacher {teacher}: no row of {src} was sampled by it (its teachers: "
                            f"{', '.join(sorted(set(n for n in names if n))) or 'not recorded'})")
        table = table.filter(pa.array([n == teacher for n in names]))
    selection = {}
    if agent_filter:
        from .agent import agent_clean

        table, selection["agent_filter"] = agent_clean(src, table)
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
        from ..data.pairs import pair_rows

        matched = pair_rows(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(),
                            table["correct"].to_pylist(), pairs)
        if not matched:
            raise DataError(f"curate --pairs: no prompt in {src} has both a correct and an incorrect trace "
                            "(sample more per prompt: sampling.n >= 2)")
        table = table.take(pa.array(sorted(i for pair in matched for i in pair), type=pa.int64()))
    if max_ppl:
        table, selection["max_ppl"] = _ppl_filter(src, table, max_ppl, ppl_model, batch_size)
    if templates:
        from .diversity import template_rows

        n, most = templates
        drop, grams = template_rows(table["completion"].to_pylist(), n, most)
        table = table.take(pa.array([i for i in range(table.num_rows) if i not in drop], type=pa.int64()))
        selection["templates"] = {"ngram": n, "max_count": most, "frequent_ngrams": grams, "dropped": len(drop)}
    if diverse is not None:
        from .diversity import most_diverse

        groups: dict = {}
        for i, (pid, ok) in enumerate(zip(table["prompt_id"].to_pylist(), table["correct"].to_pylist())):
            if ok:
                groups.setdefault(pid, []).append(i)
        texts = table["completion"].to_pylist()
        keep = sorted(rows[j] for rows in groups.values() for j in most_diverse([texts[r] for r in rows], diverse))
        table = table.take(pa.array(keep, type=pa.int64()))
    das_stats = None
    if das_student:
        table, das_stats = _das_select(source, table, das_student, das_keep, das_delta, batch_size, console,
                                       rule=das_rule, seed=seed)
    applied = {**({"teacher": teacher} if teacher else {}), "correct_only": correct_only, "max_tokens": max_tokens,
               "first_k_correct": first_k_correct,
               "pairs": pairs}
    if agent_filter:
        applied["agent_filter"] = selection["agent_filter"]
    if max_ppl:
        applied["max_ppl"] = selection["max_ppl"]
    if templates:
        applied["templates"] = selection["templates"]
    if diverse is not None:
        applied["diverse"] = diverse
    if das_student:
        applied["das"] = {"student": das_student, "student_weights_sha256": das_stats.pop("student_weights_sha256"),
                          "keep": das_keep, "delta": das_delta, "rule": das_rule,
                          **({"seed": seed} if das_rule == "random" else {})}
    params = {"source": str(Path(src).resolve()), "source_params": source["params"], "filters": applied}
    if unfinished:  # the source's finished shards only: say how many, in the new set's params
        params["source_shards"] = sorted(int(i) for i in source["shards"])
    counts = {i: min(shard_rows, table.num_rows - i * shard_rows)
              for i in range(max(1, -(-table.num_rows // shard_rows)))}
    writer = open_output(out, params, source, overwrite=overwrite, shard_rows=counts)
    for i, rows in counts.items():
        writer.write_shard(i, table.slice(i * shard_rows, rows))
    writer.finish({**trace_stats(table), **({"das": das_stats} if das_stats else {})})
    return writer.manifest["stats"]


def _das_select(source: dict, table: pa.Table, student: str, keep: int, delta: float, batch_size: int, console,
                *, rule: str = "das", seed: int = 0):
    import numpy as np

    from ..config import ModelConfig
    from ..data.collate import TraceEncoder
    from ..models import load_model, load_tokenizer
    from ..data.hashes import weights_sha256
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
    kept = select_top(cols["prompt_id"], cols["sample_idx"], rows, scores, keep, rule=rule, seed=seed)
    s_all = np.array([scores[i].score for i in rows])
    s_kept = np.array([scores[i].score for i in kept])
    sent = sum(scores[i].sentences for i in rows)
    stats = {"score_mean_all": float(s_all.mean()) if rows else 0.0,
             "score_mean_kept": float(s_kept.mean()) if kept else 0.0,
             "teacher_sentence_share": sum(scores[i].teacher_sentences for i in rows) / max(1, sent),
             "student_sentence_share": sum(scores[i].student_sentences for i in rows) / max(1, sent),
             "sentences": sent, "student_weights_sha256": weights_sha256(model),
             "student_lp_mean_all": float(np.mean([scores[i].student_lp for i in rows])) if rows else 0.0,
             "student_lp_mean_kept": float(np.mean([scores[i].student_lp for i in kept])) if kept else 0.0}
    return table.take(pa.array(kept, type=pa.int64())), stats


def format_stats(stats: dict) -> str:
    return json.dumps(stats, indent=2)


def _ppl_filter(src: str, table: pa.Table, limits: dict, model: str, batch_size: int):
    """AM's quality filter: drop the traces whose perplexity under `model` exceeds their teacher's
    limit (`limits[teacher]`, else `limits["*"]`; a teacher with neither is not filtered)."""
    from .stats import perplexity, row_nll

    names = [t or "all" for t in (table["teacher"].to_pylist() if "teacher" in table.column_names
                                   else [None] * table.num_rows)]
    unknown = sorted(set(limits) - {"*"} - set(names))
    if unknown:
        raise DataError(f"curate --max-ppl: no teacher {', '.join(map(repr, unknown))} in {src} (its teachers: "
                        f"{', '.join(sorted(set(names)))})")
    nll = row_nll(table, model, batch_size=batch_size)
    keep, dropped = [], {}
    for i, (name, row) in enumerate(zip(names, nll)):
        limit = limits.get(name, limits.get("*"))
        if limit is not None and perplexity(row) > limit:
            dropped[name] = dropped.get(name, 0) + 1
        else:
            keep.append(i)
    return table.take(pa.array(keep, type=pa.int64())), {"model": model, "limits": limits, "dropped": dropped}

"""What the curate commands that write new completions for a trace set's correct rows share
(`shorten`'s rewrites and revisions, `knowledge`'s LoRID rows, `mind`'s turn format): the source
rows, the revising server, the output set re-scored by the teacher, and a token counter."""

from __future__ import annotations

from math import ceil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ...errors import DataError
from ..data.traces import SCHEMA, read_manifest, read_traces
from ..tasks.base import Prompt, manifest_format
from .output import check_output, open_output
from .server import api_teacher
from .stats import trace_stats


def correct_rows(src: str, max_prompts: int, *, reads: str, nothing: str, single_turn: bool = False):
    """(manifest, rows): the correct traces of `src` (single-turn ones only with `single_turn`), of
    its first `max_prompts` prompts (0: all), each prompt as the teacher was prompted (system message
    included). `reads` names the command in the message for a set without teacher and task; `nothing`
    ends the message when no row is left."""
    manifest = read_manifest(src)
    if "teacher" not in manifest["params"] or "task" not in manifest["params"]:
        raise DataError(f"{src}: the manifest does not name the teacher and task that made it; {reads} reads a "
                        "set `retort traces` wrote (or one filtered from it)")
    table = read_traces(src)
    table = table.filter(pc.equal(table["correct"], True))
    if single_turn and "messages" in table.column_names:
        table = table.filter(pc.is_null(table["messages"]))
    if max_prompts:
        keep, seen = [], set()
        for i, pid in enumerate(table["prompt_id"].to_pylist()):
            if pid in seen or len(seen) < max_prompts:
                seen.add(pid)
                keep.append(i)
        table = table.take(keep)
    if not table.num_rows:
        raise DataError(f"{src}: {nothing}")
    rows = table.to_pylist()
    system = manifest_format(manifest)["system"]
    for r in rows:
        r["prompt"] = Prompt(r["prompt"], system)
    return manifest, rows


class RescoredOutput:
    """The output trace set: shards of `shard` source rows, resumable, re-scored by the teacher."""

    def __init__(self, src, out, manifest, params, overwrite, rows, shard, tok, scorer, batch_size):
        check_output(src, out, resume=True)
        self.params = {"source": str(Path(src).resolve()), "source_params": manifest["params"], **params,
                       "teacher": manifest["params"]["teacher"], "task": manifest["params"]["task"],
                       "sampling": manifest["params"].get("sampling", {})}
        self.writer = open_output(out, self.params, manifest, overwrite=overwrite, resume=True)
        self.rows, self.shard, self.out = rows, shard, out
        # scorer: the local teacher that re-scores the new completions (None: text and ids only)
        self.tok, self.scorer, self.batch_size = tok, scorer, batch_size
        self.topk = int(self.params["sampling"].get("topk") or 0)

    def shards(self):
        for index in range(ceil(len(self.rows) / self.shard)):
            yield index, self.rows[index * self.shard:(index + 1) * self.shard], index in self.writer.done()

    def counts(self, key: str, start: dict) -> dict:
        return dict(self.writer.manifest.get(key) or start)

    def write(self, index: int, rows: list[dict], texts: list[str], key: str, counts: dict) -> None:
        """Source rows with new completions (`texts`), tokenised and re-scored by the teacher when
        it is the local reviser (a server, or another reviser: text and ids only)."""
        from ..data.collate import encode_prompt
        from ..data.topk import encode_scores
        from ..rollout.score import score

        tok = self.tok
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        scored = [None] * len(rows)
        if self.scorer is not None and rows:
            eos = [tok.eos_token_id] if self.topk and tok.eos_token_id is not None else []
            scored = score(self.scorer, [encode_prompt(tok, r["prompt"]) for r in rows], [i + eos for i in ids],
                           topk=self.topk, batch_size=self.batch_size, pad_id=tok.pad_token_id or 0)
        out = []
        for r, text, i, sc in zip(rows, texts, ids, scored):
            row = {k: r.get(k) for k in SCHEMA.names}
            row.update(completion=text, completion_ids=i,
                       completion_logprobs=sc.logprobs[:len(i)] if sc is not None else [],
                       topk=encode_scores(sc, min(self.topk, len(tok))) if self.topk and sc is not None else None,
                       finish_reason="stop", n_tokens=len(i), reasoning=None,
                       api_tokens=None)
            out.append(row)
        self.writer.manifest[key] = counts
        self.writer.write_shard(index, pa.Table.from_pylist(out, schema=SCHEMA))

    def finish(self, key: str, counts: dict) -> dict:
        self.writer.finish({**trace_stats(read_traces(self.out, allow_incomplete=True)), key: counts})
        return self.writer.manifest["stats"]


def revising_server(src: str, manifest: dict, reviser: str | None, teacher_url: str | None):
    """The server that revises the traces: the set's own (`openai:MODEL`, where `teacher_url` may
    move it), unless a local `reviser` is named; None for a local reviser."""
    if reviser is None:
        return api_teacher(src, manifest, teacher_url, "a rewrite or revision continues or replaces the traces")
    if teacher_url:
        raise DataError(f"curate --teacher-url: {src} was sampled from a local teacher "
                        f"({manifest['params']['teacher']['name']})")
    return None


def max_new_tokens(manifest: dict) -> int:
    """A rewrite or continuation may be as long as the traces could be."""
    return int(manifest["params"].get("sampling", {}).get("max_new_tokens", 256))


def token_counter(tok):
    """text -> its number of tokens (no special tokens)."""
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])

"""DASD's mixed-policy data (arXiv:2601.09088, stage 3): student prefixes
continued by the teacher, to be trained on *unmasked* (the student's own prefix included).

For each prompt of a trace set (its first correct teacher trace gives the length budget):
1. the student samples an answer, capped at `length_factor` x the teacher trace's token count;
2. only the student answers that went wrong are used: `source=truncated` (the report's rule: cut
   off by the cap), `failed` (cut off or verified incorrect; more of them at small scale) or `all`;
3. a cut position is drawn uniformly from the open interval (`cut_lo` x L, L) of its L tokens;
4. the teacher continues from the prompt plus the student prefix (sampled at `temperature`);
5. quality filter (the report's is unpublished; retort's reading): the teacher must finish
   (EOS) and the whole answer, prefix + continuation, must verify.
Each kept row's completion is prefix + continuation, re-scored by the teacher (its log-probs, and
its top-k when the source traces have them), so the result is an ordinary trace set that `sft`
trains on with the loss on every completion token. `with_source` appends the mixed rows to the
source's correct rows (the report's ablation mixes 7.7K such rows into 20K off-policy ones).

Resumable: rows are written in shards of `shard_prompts` source prompts, each seeded by its index;
rerun the same command after a crash and it continues.
"""

from __future__ import annotations

import hashlib
import random
from math import ceil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ...errors import DataError
from ..data.collate import encode_prompt, render_prompt
from ..data.traces import SCHEMA, read_manifest, read_traces
from ..tasks.base import Prompt, manifest_format
from .output import check_output, holds_out, open_output
from .progress import CurateProgress
from .server import api_teacher
from .stats import trace_stats

SOURCES = ("truncated", "failed", "all")


def _seed(seed: int, *keys) -> int:
    return int(hashlib.sha256(":".join(map(str, (seed, *keys))).encode()).hexdigest()[:8], 16)


@holds_out
def mixed_policy(src: str, out: str, student: str, *, source: str = "failed", length_factor: float = 1.5,
                 cut_lo: float = 0.5, temperature: float | None = None, max_prompts: int = 0,
                 with_source: bool = False, shard_prompts: int = 256, batch_size: int = 64, seed: int = 0,
                 overwrite: bool = False, teacher_url: str | None = None, console=None) -> dict:
    import torch

    from ..config import ModelConfig, TaskConfig
    from ..models import load_model
    from ..rollout.generate import generate_ids
    from ..rollout.score import score
    from ..tasks import get_task
    from ..data.hashes import tokenizer_sha256, weights_sha256
    from ..data.topk import encode_scores

    if source not in SOURCES:
        raise DataError(f"curate --mixed-from: expected one of {', '.join(SOURCES)}, got {source!r}")
    if not 0.0 <= cut_lo < 1.0:
        raise DataError(f"curate --cut-lo: expected 0 <= value < 1, got {cut_lo}")
    if length_factor <= 0:
        raise DataError(f"curate --length-factor: expected > 0, got {length_factor}")
    check_output(src, out, resume=True)  # the paths; a trace set already in `out` is judged below
    manifest = read_manifest(src)
    sp = manifest["params"].get("sampling", {})
    if "teacher" not in manifest["params"] or "task" not in manifest["params"]:
        raise DataError(f"{src}: the manifest does not name the teacher and task that made it (a curated set? "
                        "use the trace set `retort traces` wrote)")
    table = read_traces(src)
    table = table.filter(pc.equal(table["correct"], True))
    cols = table.to_pydict()
    # the prompts as the teacher was prompted (and the student learns them): with the set's system message
    system = manifest_format(manifest)["system"]
    cols["prompt"] = [Prompt(p, system) for p in cols["prompt"]]
    first: dict[str, int] = {}
    for i, pid in enumerate(cols["prompt_id"]):
        first.setdefault(pid, i)
    rows = sorted(first.values())[:max_prompts or None]
    if not rows:
        raise DataError(f"{src}: no correct teacher trace to take a prompt and length budget from")
    temperature = sp.get("temperature", 1.0) if temperature is None else temperature
    topk = int(sp.get("topk") or 0)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    api = api_teacher(src, manifest, teacher_url)
    if api is not None:  # a server: it continues text (completions endpoint) and scores nothing here
        t_model, t_tok = None, api.tokenizer
    else:
        t_model, t_tok = load_model(ModelConfig(**manifest["params"]["teacher"]))
        want = manifest["params"].get("teacher_weights_sha256")
        if want and weights_sha256(t_model) != want:
            raise DataError(f"{src}: its teacher ({manifest['params']['teacher']['name']}) has changed since the "
                            "traces were made (weights hash differs); mixed-policy rows need the same teacher")
        t_model.to(device).eval()
    s_model, s_tok = load_model(ModelConfig(name=student))
    s_model.to(device).eval()
    same_tok = tokenizer_sha256(s_tok) == tokenizer_sha256(t_tok)
    task = get_task(TaskConfig(**manifest["params"]["task"]))

    params = {"source": str(Path(src).resolve()), "source_params": manifest["params"],
              "mixed_policy": {"student": student, "student_weights_sha256": weights_sha256(s_model),
                               "from": source, "length_factor": length_factor, "cut_lo": cut_lo,
                               "temperature": temperature, "max_prompts": max_prompts, "with_source": with_source,
                               "shard_prompts": shard_prompts, "seed": seed},
              "teacher": manifest["params"]["teacher"], "task": manifest["params"]["task"],
              "sampling": {**sp, "temperature": temperature}}
    n_shards = ceil(len(rows) / shard_prompts)
    writer = open_output(out, params, manifest, overwrite=overwrite, resume=True)
    counts = {"student_rollouts": 0, "eligible": 0, "continued": 0, "kept": 0}
    if "mixed_counts" in writer.manifest:
        counts = writer.manifest["mixed_counts"]
    eos = t_tok.eos_token_id
    last_idx: dict[str, int] = {}  # mixed rows take the next sample index of their prompt
    for pid, j in zip(cols["prompt_id"], cols["sample_idx"]):
        last_idx[pid] = max(last_idx.get(pid, -1), j)
    with CurateProgress(console, "mixed-policy", len(rows), "prompts") as bar:
        for index in range(n_shards):
            shard = rows[index * shard_prompts:(index + 1) * shard_prompts]
            if index in writer.done():
                bar(len(shard))
                continue
            # 1. the student's answers, capped at length_factor x the teacher trace's length
            s_prompts = [encode_prompt(s_tok, cols["prompt"][i]) for i in shard]
            caps = [max(1, ceil(length_factor * cols["n_tokens"][i])) for i in shard]
            outs = generate_ids(s_model, s_tok, s_prompts, max_new_tokens=max(caps), temperature=temperature,
                                batch_size=batch_size, seed=_seed(seed, "student", index))
            picks = []
            for i, cap, o in zip(shard, caps, outs):
                c = o[0]
                ids, reason = (c.token_ids[:cap], "length") if len(c.token_ids) > cap else (c.token_ids, c.finish_reason)
                text = s_tok.decode(ids, skip_special_tokens=True)
                failed = reason == "length" or not task.verify(text, cols["reference"][i], cols["prompt"][i])
                if (source == "truncated" and reason != "length") or (source == "failed" and not failed):
                    continue
                if len(ids) < 2:
                    continue
                lo = int(cut_lo * len(ids)) + 1  # open interval (cut_lo*L, L)
                if lo > len(ids) - 1:
                    continue
                cut = random.Random(_seed(seed, "cut", cols["prompt_id"][i])).randint(lo, len(ids) - 1)
                picks.append((i, ids[:cut]))
            counts["student_rollouts"] += len(shard)
            counts["eligible"] += len(picks)
            # 2. the teacher continues each prefix
            prefixes = [s_tok.decode(p, skip_special_tokens=True) for _, p in picks]
            t_prefix = [p if same_tok else t_tok(text, add_special_tokens=False)["input_ids"]
                        for (_, p), text in zip(picks, prefixes)]
            t_prompts = [encode_prompt(t_tok, cols["prompt"][i]) for i, _ in picks]
            if api is not None:  # the rendered prompt + the prefix, continued as text by the server
                texts = [render_prompt(t_tok, cols["prompt"][i]) + text for (i, _), text in zip(picks, prefixes)]
                conts = api.generate(texts, max_new_tokens=int(sp.get("max_new_tokens", 256)),
                                     temperature=temperature, top_p=float(sp.get("top_p", 1.0)),
                                     seed=_seed(seed, "teacher", index), endpoint="completions") if picks else []
            else:
                conts = generate_ids(t_model, t_tok, [a + b for a, b in zip(t_prompts, t_prefix)],
                                     max_new_tokens=int(sp.get("max_new_tokens", 256)), temperature=temperature,
                                     batch_size=batch_size, seed=_seed(seed, "teacher", index)) if picks else []
            counts["continued"] += len(picks)
            kept = []
            for (i, _), prefix, tp, prompt_ids, o in zip(picks, prefixes, t_prefix, t_prompts, conts):
                c = o[0]
                text = prefix + c.text
                if c.finish_reason != "stop" or not task.verify(text, cols["reference"][i], cols["prompt"][i]):
                    continue
                ids = list(tp) + (c.token_ids or t_tok(c.text, add_special_tokens=False)["input_ids"])
                kept.append((i, text, ids, prompt_ids))
            # 3. teacher-score the whole completion: an ordinary trace row (a server scores no given
            # text unless it offers prompt_logprobs: its rows carry text and ids, for unmasked sft)
            if api is not None:
                scored = [None] * len(kept)
            else:
                scored = score(t_model, [k[3] for k in kept],
                               [k[2] + ([eos] if topk and eos is not None else []) for k in kept],
                               topk=topk, batch_size=batch_size, pad_id=t_tok.pad_token_id or 0) if kept else []
            out_rows = []
            if with_source:
                mine = set(cols["prompt_id"][i] for i in shard)
                out_rows += [{k: cols[k][j] for k in SCHEMA.names if k in cols}
                             for j in range(len(cols["prompt_id"])) if cols["prompt_id"][j] in mine]
            for (i, text, ids, _), sc in zip(kept, scored):
                out_rows.append({
                    "prompt_id": cols["prompt_id"][i], "sample_idx": last_idx[cols["prompt_id"][i]] + 1,
                    "prompt": cols["prompt"][i], "completion": text, "completion_ids": ids,
                    "completion_logprobs": sc.logprobs[:len(ids)] if sc is not None else [],
                    "topk": encode_scores(sc, min(topk, len(t_tok))) if topk and sc is not None else None,
                    "answer": task.extract_answer(text, cols["prompt"][i]), "reference": cols["reference"][i], "correct": True,
                    "finish_reason": "stop", "n_tokens": len(ids), "difficulty": cols["difficulty"][i],
                })
            counts["kept"] += len(kept)
            writer.manifest["mixed_counts"] = counts
            writer.write_shard(index, pa.Table.from_pylist(out_rows, schema=SCHEMA))
            bar(len(shard))
    writer.finish({**trace_stats(read_traces(out, allow_incomplete=True)), "mixed_policy": counts})
    return writer.manifest["stats"]


__all__ = ["SOURCES", "mixed_policy"]

"""`retort traces`: the teacher samples N completions per prompt; each is verified by the task,
scored (the teacher's log-prob of every sampled token, optionally its top-k), and stored as
Parquet shards (`retort.lm.data.traces`). Progress is per shard: killed at any moment and rerun with
the same arguments, the run continues and ends with exactly prompts x N rows. Rerun with another
`n_prompts` (and nothing else changed), a lower one ends the set at that size and a higher one
continues it (the finished shards kept; the manifest's `resized` says so). A run, new or
continued, holds the trace directory's lock (`retort.lock`): a second command writing it is refused.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, replace
from math import ceil
from pathlib import Path

from .. import __version__, threads
from ..progress import ProgressLines
from .config import teacher_params
from ..errors import ConfigError
from ..lock import holding
from .data import topk as topk_codec
from .data.hashes import tokenizer_sha256, weights_sha256
from .data.traces import SCHEMA, TraceWriter, check_target, read_traces
from .tasks import get_task, require_examples
from .tasks.base import task_params
from .teachers import check_capabilities, open_teacher


def _shard_seed(seed: int, index: int) -> int:
    return int(hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:8], 16)


@holding(lambda run, *_, **__: run.out)
def run_traces(run, console=None, *, batch_out=None, batch_in=None) -> Path:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    threads.pin(run.threads)
    check_target(run.out)  # before any work: a file, or a directory of other things, is refused
    check_capabilities("traces", ({"generate"},), run.teacher.name)
    api = run.teacher.name.startswith("openai:")
    if (batch_out or batch_in) and not api:
        raise ConfigError("--batch-out/--batch-in: batch files are for a teacher behind an API "
                          "(teacher.name=openai:MODEL); a local teacher samples here")
    task = get_task(run.task)
    n_prompts = require_examples(task, run.split, run.n_prompts, "traces", run.seed)
    if n_prompts < run.n_prompts and console is not None:
        console.print(f"traces: {task.describe_split(run.split)} has {n_prompts} distinct prompts; sampling "
                      f"each of them once (n_prompts={run.n_prompts} asks for more)")
    examples = task.examples(run.split, n_prompts, run.seed)
    if any(str(t).startswith(("openai:", "traces:")) for t in run.teachers):
        raise ConfigError("teachers=[...]: several teachers are local models in this version; sample an API teacher "
                          "with teacher.name=openai:MODEL into a set of its own")
    if api and run.teachers:
        raise ConfigError("teachers=[...] with teacher.name=openai:...: name the models in teachers, or one API teacher")
    if run.agent.kind == "code":
        from .traces_agent import run_agent_traces

        return run_agent_traces(run, task, examples, console)
    if run.program == "python":
        from .traces_programs import run_program_traces

        return run_program_traces(run, task, examples, console)
    if api:
        from .traces_api import run_api_traces

        return run_api_traces(run, task, examples, console, batch_out=batch_out, batch_in=batch_in)
    import torch  # a local teacher only: an API run never loads torch (a finished set reruns in a second)

    from .data.collate import encode_prompt

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # several teachers (`teachers=[...]`): each samples every prompt into the same set; rows say whose
    names = list(run.teachers) or [run.teacher.name]
    teachers = [open_teacher(replace(run.teacher, name=name), seed=run.seed, device=device) for name in names]
    teacher = teachers[0]
    tok = teacher.tokenizer
    identities = [t.identity() for t in teachers]
    toks = [tokenizer_sha256(t.tokenizer) for t in teachers]
    s, n = run.shard_prompts, run.sampling.n
    n_shards = ceil(len(examples) / s)
    shard_rows = {i: len(examples[i * s:(i + 1) * s]) * n * len(teachers) for i in range(n_shards)}
    params = {**task_params(run.task, task), "teacher": teacher_params(run.teacher), "teacher_weights_sha256": identities[0],
              "sampling": asdict(run.sampling), "split": run.split, "n_prompts": len(examples), "seed": run.seed,
              "shard_prompts": s}
    if run.teachers:
        params["teacher"]["name"] = names[0]
        params["teachers"] = [{"name": nm, "weights_sha256": w} for nm, w in zip(names, identities)]
    meta = {"retort_version": __version__, "task": task.name, "teacher": names[0],
            # the set's token ids are in one vocabulary only when every teacher shares it; otherwise
            # readers tokenise the text again (and offline KD from the set is refused)
            "tokenizer_sha256": toks[0] if len(set(toks)) == 1 else None, "vocab_size": len(tok),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    plan = {i: [e.id for e in examples[i * s:(i + 1) * s]] for i in range(n_shards)}
    writer = TraceWriter(run.out, params, meta, shard_rows, plan=plan)
    if console is not None and writer.resized:
        r = writer.resized
        console.print(f"traces: n_prompts {r['from']} -> {r['to']}: the set " + (
            f"ends at {r['to']} prompts ({r['dropped_rows']} rows past them removed)" if r["to"] < r["from"]
            else f"continues to {r['to']} prompts") + "; its manifest records the change (resized)")
    todo = [i for i in range(n_shards) if i not in writer.done()]
    if console is not None and len(todo) < n_shards:
        console.print(f"traces: {n_shards - len(todo)} of {n_shards} shards already in {run.out}; continuing")
    interactive = console is not None and console.is_terminal
    progress = Progress(TextColumn("[bold]traces"), BarColumn(), MofNCompleteColumn(), TextColumn("prompts"),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
                        TimeRemainingColumn(), disable=not interactive)
    t0, tokens = time.time(), 0
    sp = run.sampling
    already = (n_shards - len(todo)) and sum(len(examples[i * s:(i + 1) * s]) for i in writer.done())
    lines = ProgressLines(console, "traces", len(examples), "prompts", done=already, enabled=not interactive
                          and console is not None)
    rows_done = sum(writer.shard_rows.get(i, 0) for i in writer.done())
    with progress:
        bar = progress.add_task("traces", total=len(examples), completed=already, rate="")
        for index in todo:
            shard = examples[index * s:(index + 1) * s]
            rows = []
            for t_i, (teacher, name, ident) in enumerate(zip(teachers, names, identities)):
                tok = teacher.tokenizer
                outs = teacher.generate([e.prompt for e in shard], max_new_tokens=sp.max_new_tokens,
                                        temperature=sp.temperature, top_p=sp.top_p, num_samples=n,
                                        batch_size=run.batch_size, seed=_shard_seed(sp.seed, index), stop=sp.stop or None,
                                        scores=sp.topk)
                if sp.temperature == 0:
                    outs = [o[:1] * n for o in outs]
                flat = [(e, j, c) for e, o in zip(shard, outs) for j, c in enumerate(o)]
                # With top-k, also score the end-of-sequence step of completions that stopped, so that
                # offline KD has the teacher's distribution at every position the student is trained on.
                if all(c.scores is not None for _, _, c in flat):
                    # the fast engine kept the teacher's log-probs (and top-k, EOS step included) while
                    # sampling: the same numbers as the teacher-forced pass below (tested), no second forward
                    scored = [c.scores for _, _, c in flat]
                else:
                    prompt_ids = {e.id: encode_prompt(tok, e.prompt) for e in shard}
                    eos = [tok.eos_token_id] if sp.topk and tok.eos_token_id is not None else []
                    scored = teacher.score([prompt_ids[e.id] for e, _, _ in flat],
                                           [c.token_ids + (eos if c.finish_reason == "stop" else []) for _, _, c in flat],
                                           topk=sp.topk, batch_size=run.batch_size)
                for (e, j, c), sc in zip(flat, scored):
                    rows.append({
                        # several teachers: teacher t's samples are t*n .. t*n + n-1 of each prompt
                        "prompt_id": e.id, "sample_idx": t_i * n + j, "prompt": e.prompt, "completion": c.text,
                        "completion_ids": c.token_ids, "completion_logprobs": sc.logprobs[:len(c.token_ids)],
                        "topk": topk_codec.encode_scores(sc, min(sp.topk, len(tok))) if sp.topk else None,
                        "answer": task.extract_answer(c.text, e.prompt), "reference": e.answer,
                        "correct": task.verify(c.text, e.answer, e.prompt), "finish_reason": c.finish_reason,
                        "n_tokens": len(c.token_ids), "difficulty": e.difficulty,
                        "teacher": name, "teacher_sha256": ident,
                    })
                    tokens += len(c.token_ids)
            place = {e.id: k for k, e in enumerate(shard)}
            rows.sort(key=lambda r: (place[r["prompt_id"]], r["sample_idx"]))
            writer.write_shard(index, rows)
            rate = f"{tokens / max(1e-9, time.time() - t0):.0f} tok/s"
            progress.update(bar, advance=len(shard), rate=rate)
            rows_done += len(rows)
            lines.advance(len(shard), f"{rows_done} rows, {rate}")
    from .curate import trace_stats

    writer.finish(trace_stats(read_traces(run.out, allow_incomplete=True)))
    stats = writer.manifest["stats"]
    if console is not None:
        who = f" x {len(teachers)} teachers" if len(teachers) > 1 else ""
        console.print(f"traces: {stats['rows']} rows ({stats['prompts']} prompts x {n}{who}), accuracy "
                      f"{stats['accuracy']:.3f}, pass@{n} {stats[f'pass@{n}']:.3f}, "
                      f"{stats['bytes_per_token']:.1f} bytes/token on disk; in {run.out}")
    return Path(run.out)


__all__ = ["SCHEMA", "run_traces", "tokenizer_sha256", "weights_sha256"]

"""`retort traces` from a teacher behind an OpenAI-compatible API (`teacher.name=openai:MODEL`).

Requests go out concurrently (`teacher.api.max_in_flight`, rate limits, retries: `teachers.http`).
Nothing received is lost or paid for twice: each answer is appended to its shard's journal
(`journal-NNNNN.jsonl`, `retort.lm.data.traces.Journal`) the moment it arrives; a shard whose
answers are all in becomes a Parquet shard like any other (recorded in the manifest with its token
usage), then its journal goes. Killed at any moment (kill -9) and rerun with the same arguments,
the run requests exactly the answers it has not received; rerun when finished, it sends nothing.

What the server answers, each kept in the row: the text (and a reasoning server's
`reasoning_content` apart), the finish reason under the `on_length` policy, the token strings with
their log-probs and top alternatives (`api_tokens`), and token ids + the top-k blob when the token
map of `teacher.api.tokenizer` is checked. The manifest holds the policy, how the token map was
checked, a token ledger (the server's usage; a cost when prices are given) and the last run's
errors by kind.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict
from math import ceil
from pathlib import Path

from .. import __version__
from ..config import teacher_params
from ..errors import ApiError, DataError
from .data import topk as topk_codec
from .data.hashes import tokenizer_sha256
from .data.traces import Journal, TraceWriter, read_traces
from .teachers.api import ApiTeacher, check_key_env
from .teachers.replies import Job, request_seed
from .teachers.http import Failed, summary


def journal_name(index: int) -> str:
    return f"journal-{index:05d}.jsonl"


class _Ledger:
    def __init__(self):
        self.responses = self.prompt_tokens = self.completion_tokens = 0

    def add(self, u, answered: bool = True) -> None:
        self.responses += answered
        self.prompt_tokens += int(u[0])
        self.completion_tokens += int(u[1])

    def dict(self) -> dict:
        return {"responses": self.responses, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}


def _cost(ledger: dict, api) -> dict:
    out = dict(ledger)
    if api.price_prompt or api.price_completion:
        out["cost"] = round(ledger["prompt_tokens"] / 1e6 * api.price_prompt +
                            ledger["completion_tokens"] / 1e6 * api.price_completion, 6)
        out["prices_per_million"] = {"prompt": api.price_prompt, "completion": api.price_completion}
    return out


def run_api_traces(run, task, examples, console=None, *, batch_out=None, batch_in=None) -> Path:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    check_key_env(run.teacher)
    teacher = ApiTeacher(run.teacher)
    sp, api = run.sampling, run.teacher.api
    s, n = run.shard_prompts, sp.n
    n_shards = ceil(len(examples) / s)
    params = {"task": asdict(run.task), "teacher": teacher_params(run.teacher), "teacher_weights_sha256": None,
              "sampling": asdict(sp), "split": run.split, "n_prompts": len(examples), "seed": run.seed,
              "shard_prompts": s}
    tok = teacher.tokenizer
    meta = {"retort_version": __version__, "task": task.name, "teacher": run.teacher.name,
            "tokenizer_sha256": None, "vocab_size": len(tok) if tok is not None else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # a batch's results are read and checked before anything is written
    batch_records = _load_batch(batch_in, teacher, sp) if batch_in is not None else None
    if batch_out is not None:
        from ..paths import output_file

        output_file(batch_out, "--batch-out")  # a directory, or a path under a file: refused now
    # shards are assembled from their journals, so an unrecorded shard file is always redone ({} sizes)
    writer = TraceWriter(run.out, params, meta, {})
    out = writer.dir
    done = writer.done()
    for index in done:  # killed after a shard was recorded but before its journal went
        (out / journal_name(index)).unlink(missing_ok=True)
    todo = [i for i in range(n_shards) if i not in done]
    greedy = sp.temperature == 0  # one request per prompt, its answer stored n times

    # what each unfinished shard's journal already holds: key -> its last record
    have: dict[int, dict[str, dict]] = {}
    spent: dict[int, _Ledger] = {}  # every answer received, retried ones included (what was paid for)
    for index in todo:
        have[index], spent[index] = {}, _Ledger()
        for r in Journal.read(out / journal_name(index)):
            have[index][r["k"]] = r
            spent[index].add(r["u"], r["s"] != "fail")
    resolved = {i: {k for k, r in have[i].items() if r["s"] in ("ok", "drop", "fail")} for i in todo}

    def keys(index):
        for e_i in range(index * s, min(len(examples), (index + 1) * s)):
            for j in range(1 if greedy else n):
                yield f"{e_i}/{j}"

    jobs_left = {i: [k for k in keys(i) if k not in resolved[i]] for i in todo}
    size = {i: len(list(keys(i))) for i in todo}  # answers each unfinished shard waits for
    total = sum(len(list(keys(i))) for i in range(n_shards))
    left = sum(len(v) for v in jobs_left.values())

    async def main():
        async with teacher.pool(seed=run.seed) as pool:
            check = await teacher.check_tokenizer(pool)
            tmap = {"tokenizer": api.tokenizer, "check": check, "ids": teacher.tokens is not None}
            recorded = writer.manifest.get("token_map")
            if recorded is not None and recorded.get("ids") != tmap["ids"] and (done or any(have.values())):
                raise DataError(f"{out}: its answers so far were stored {'with' if recorded['ids'] else 'without'} "
                                f"token ids, but now the token map is {check!r}; the server's model changed? Use "
                                "another output directory")
            # where the server was (not part of the set's identity: it may move): what `curate
            # --mixed-policy` asks when it continues student prefixes with this teacher
            writer.update(token_map=tmap, tokenizer_sha256=tokenizer_sha256(tok) if tmap["ids"] else None,
                          api_server={"base_url": api.base_url, "key_env": api.key_env})
            if console is not None and (tok is None or not tmap["ids"]):
                console.print(f"traces: token ids not mapped ({check}); rows keep text and the server's token "
                              "strings; token-level KD from this set will be refused")
            await _sample(pool)

    journals: dict[int, Journal] = {}
    state = {"tokens": 0, "received": 0, "failed": [], "t0": time.time()}

    def row_of(job_key, reply, attempt):
        e = examples[int(job_key.split("/")[0])]
        answer_text = reply.text
        if reply.reasoning is not None:  # what the student learns: the reasoning, then the answer
            reply.text = api.reasoning_template.format(reasoning=reply.reasoning, answer=answer_text)
        ids = teacher.tokens.ids(reply) if teacher.tokens is not None and reply.tokens is not None else None
        row = {"prompt_id": e.id, "prompt": e.prompt, "completion": reply.text, "reasoning": reply.reasoning,
               "answer": task.extract_answer(answer_text), "reference": e.answer,
               "correct": task.verify(answer_text, e.answer), "finish_reason": reply.finish_reason,
               "difficulty": e.difficulty, "api_tokens": reply.tokens_json(), "topk": None,
               "teacher": run.teacher.name}
        if ids is not None:
            eos = tok.eos_token_id
            trimmed = ids[:-1] if ids and ids[-1] == eos else ids
            row["completion_ids"] = trimmed
            row["completion_logprobs"] = [t.logprob for t in reply.tokens[:len(trimmed)]]
            if sp.topk:
                sc = teacher.scored(reply, ids, sp.topk)
                k = len(sc.topk_ids[0]) if sc.topk_ids else 0
                if k:
                    row["topk"] = topk_codec.encode(sc.topk_ids, sc.topk_logprobs, sc.topk_tail).hex()
            row["n_tokens"] = len(trimmed)
        elif tok is not None and teacher.tokens is not None:
            # the server gave no tokens (or ones that do not spell the text): the checked tokenizer's
            # own split of the text, as training would make it; no teacher log-probs for this row
            row["completion_ids"] = teacher.tok_ids(reply.text)
            row["completion_logprobs"] = []
            row["n_tokens"] = len(row["completion_ids"])
        else:
            row["completion_ids"] = []
            row["completion_logprobs"] = [t.logprob for t in reply.tokens] if reply.tokens else []
            row["n_tokens"] = reply.completion_tokens or (len(reply.tokens) if reply.tokens else 0)
        return row

    shard_of = {k: i for i in todo for k in keys(i)}
    progress_cb = {}

    def on_reply(job: Job, res):
        index = shard_of[job.key]
        if isinstance(res, Failed):
            if res.final:  # the server refuses this request as it is (e.g. too long): not retried by a rerun
                rec = {"k": job.key, "a": job.attempt, "s": "fail", "u": [0, 0], "why": str(res)[:500]}
            else:
                state["failed"].append(res)
                progress_cb["advance"](0)
                return None
        else:
            state["received"] += 1
            state["tokens"] += res.completion_tokens or (len(res.tokens) if res.tokens else 0)
            status = "ok"
            if res.finish_reason == "length" and api.on_length != "keep":
                status = "retry" if api.on_length == "retry" and job.attempt < api.max_retries else "drop"
            rec = {"k": job.key, "a": job.attempt, "s": status, "u": [res.prompt_tokens, res.completion_tokens],
                   "url": res.url}
            if status == "ok":
                rec["row"] = row_of(job.key, res, job.attempt)
        j = journals.get(index) or journals.setdefault(index, Journal(out / journal_name(index)))
        j.append(rec)
        spent[index].add(rec["u"], rec["s"] != "fail")
        have[index][job.key] = rec
        if rec["s"] == "retry":
            return Job(job.key, job.prompt, request_seed(sp.seed, job.key, job.attempt + 1), job.attempt + 1)
        resolved[index].add(job.key)
        progress_cb["advance"](1)
        if len(resolved[index]) == size[index]:
            _finish_shard(index)
        return None

    def _finish_shard(index):
        rows = []
        for key in keys(index):
            rec = have[index][key]
            if rec["s"] != "ok":
                continue
            for j in (range(n) if greedy else [int(key.split("/")[1])]):
                row = dict(rec["row"], sample_idx=j)
                if row.get("topk"):
                    row["topk"] = bytes.fromhex(row["topk"])
                rows.append(row)
        # requests the server refused for good (e.g. a prompt too long): named, with its words
        refused = [{"prompt_id": examples[int(k.split("/")[0])].id, "sample_idx": int(k.split("/")[1]),
                    "why": have[index][k].get("why", "")} for k in keys(index) if have[index][k]["s"] == "fail"]
        writer.write_shard(index, rows, extra={"usage": spent[index].dict(), "refused": refused,
                                               "dropped": sum(1 for r in have[index].values() if r["s"] in ("drop", "fail"))})
        if index in journals:
            journals.pop(index).close()
        (out / journal_name(index)).unlink(missing_ok=True)

    async def _sample(pool):
        interactive = console is not None and console.is_terminal
        progress = Progress(TextColumn("[bold]traces"), BarColumn(), MofNCompleteColumn(), TextColumn("answers"),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
                            TimeRemainingColumn(), disable=not interactive)
        last = {"t": time.time()}
        with progress:
            bar = progress.add_task("traces", total=total, completed=total - left, rate="")

            def advance(k):
                el = max(1e-9, time.time() - state["t0"])
                rate = f"{state['tokens'] / el:.0f} tok/s"
                progress.update(bar, advance=k, rate=rate)
                if console is not None and not interactive and time.time() - last["t"] > 10:
                    last["t"] = time.time()
                    got = state["received"]
                    eta = (left - got) * el / got if got else float("nan")
                    console.print(f"traces: {total - left + got}/{total} answers, {rate}, eta {eta:.0f} s")
            progress_cb["advance"] = advance
            # shards already begun first, so their journals close early
            for index in todo:
                if index not in journals and len(resolved[index]) == size[index]:
                    _finish_shard(index)  # all answers were in; killed before the shard was written
            try:
                await teacher.run(jobs_todo(), on_reply, pool=pool, max_tokens=sp.max_new_tokens,
                                  temperature=sp.temperature, top_p=sp.top_p, stop=sp.stop or None, topk=sp.topk)
            finally:
                for j in journals.values():
                    j.close()
                journals.clear()
                writer.update(ledger=_cost(_ledger(), api),
                              last_run={"requests": pool.requests, "answers": state["received"],
                                        "seconds": round(time.time() - state["t0"], 3),
                                        "errors": dict(pool.errors), "by_url": dict(pool.sent)})
                state["pool"] = pool

    def _ledger():
        """Every answer received over all runs: finished shards' usage (their journals are gone)
        from the manifest, unfinished ones' from their journals."""
        tot = _Ledger()
        for info in writer.manifest["shards"].values():
            u = info.get("usage") or {}
            tot.responses += u.get("responses", 0)
            tot.prompt_tokens += u.get("prompt_tokens", 0)
            tot.completion_tokens += u.get("completion_tokens", 0)
        for i in todo:
            if str(i) not in writer.manifest["shards"]:
                tot.responses += spent[i].responses
                tot.prompt_tokens += spent[i].prompt_tokens
                tot.completion_tokens += spent[i].completion_tokens
        return tot.dict()

    def jobs_todo():
        return (Job(k, examples[int(k.split("/")[0])].prompt, request_seed(sp.seed, k, have[i].get(k, {}).get("a", -1) + 1),
                    have[i].get(k, {}).get("a", -1) + 1)
                for i in todo for k in jobs_left[i])

    if batch_out is not None:
        return _write_batch(batch_out, jobs_todo(), teacher, sp, console, total, left)
    if batch_in is not None:
        progress_cb["advance"] = lambda k: None
        writer.update(token_map={"tokenizer": api.tokenizer, "ids": teacher.tokens is not None,
                                 "check": "by bytes (batch results: no server to ask)" if tok is not None else
                                 teacher.token_check},
                      tokenizer_sha256=tokenizer_sha256(tok) if teacher.tokens is not None else None)
        stats = _read_batch(batch_records, {j.key: j for j in jobs_todo()}, on_reply)
        for j in journals.values():
            j.close()
        journals.clear()
        writer.update(ledger=_cost(_ledger(), api), last_run={"batch_in": str(batch_in), **stats})
        missing = sum(size[i] - len(resolved[i]) for i in todo if str(i) not in writer.manifest["shards"])
        if missing:
            if console is not None:
                console.print(f"traces: {stats['answers']} answers read from {batch_in} ({stats['skipped']} already "
                              f"held, {stats['failed']} failed); {missing} still missing: write them with --batch-out "
                              "or rerun against a server")
            return out
        state["received"] = stats["answers"]
    else:
        if console is not None and left < total:
            console.print(f"traces: {total - left} of {total} answers already in {out}; requesting the other {left}")
    try:
        if batch_in is None and left:
            asyncio.run(main())
        elif batch_in is None:  # every answer is in: not one request, not even the tokenizer probe
            for index in todo:  # answers all journaled, killed before their shard was written
                _finish_shard(index)
            writer.update(ledger=_cost(_ledger(), api),
                          last_run={"requests": 0, "answers": 0, "seconds": 0.0, "errors": {}, "by_url": {}})
    except ApiError as e:
        raise ApiError(f"{e}; the answers received are kept in {out}: rerun the same command to continue") from None
    except KeyboardInterrupt:
        if console is not None:
            console.print(f"traces: stopped; every answer received is kept in {out}; rerun the same command to "
                          "continue")
        raise
    pool = state.get("pool")
    errs = summary(pool.errors) if pool is not None else "none"
    if state["failed"]:
        kinds = sorted({f.kind for f in state["failed"]})
        raise ApiError(f"traces: {len(state['failed'])} requests failed after {api.max_retries} retries "
                       f"({', '.join(kinds)}; every failed attempt: {errs}); the {state['received']} answers "
                       f"received are kept in {out}: rerun the same command to request the rest")
    from .curate import trace_stats

    writer.finish(trace_stats(read_traces(out, allow_incomplete=True)))
    m = writer.manifest
    st = m["stats"]
    if console is not None:
        led = m["ledger"]
        cost = f", cost {led['cost']:.4f}" if "cost" in led else ""
        console.print(f"traces: {st.get('rows', 0)} rows ({st.get('prompts', 0)} prompts), accuracy "
                      f"{st.get('accuracy', float('nan')):.3f}; this run: {pool.requests if pool else 0} requests, "
                      f"{state['received']} answers, failed attempts: {errs}; ledger {led['prompt_tokens']} prompt + "
                      f"{led['completion_tokens']} completion tokens{cost}; in {out}")
    return out


def _custom_id(job: Job) -> str:
    return f"retort:{job.key}:{job.attempt}"


def _write_batch(path, jobs, teacher, sp, console, total, left) -> Path:
    """The requests not yet answered as an OpenAI batch file (one JSON line per request: custom_id,
    method, url, body), for `vllm run-batch` or a provider's batch API; nothing is sent."""
    from ..paths import atomic_write_text, output_file

    target = output_file(path, "--batch-out")
    lines = []
    for job in jobs:
        route, body = teacher.body(job.prompt, max_tokens=sp.max_new_tokens, temperature=sp.temperature,
                                   top_p=sp.top_p, seed=job.seed, stop=sp.stop or None, topk=sp.topk)
        lines.append(json.dumps({"custom_id": _custom_id(job), "method": "POST", "url": "/v1" + route, "body": body},
                                ensure_ascii=False))
    atomic_write_text(target, "".join(line + "\n" for line in lines))
    if console is not None:
        console.print(f"traces: {len(lines)} requests written to {target} ({total - left} of {total} answers already "
                      "held); run them (e.g. `vllm run-batch -i FILE -o RESULTS --model M`), then read the results "
                      "back with the same command and --batch-in RESULTS")
    return target


def _load_batch(path, teacher, sp) -> list:
    """An OpenAI batch output file (one line per request: custom_id, response {status_code, body}
    or error), read and checked whole before anything is written: [(line, key, attempt, Reply |
    Failed)], key None for a custom_id this set did not write. A malformed line is one clear error."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--batch-in {path}: no such file")
    parse = teacher.parser(sp.topk)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            cid = rec["custom_id"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{n}: not a batch result line (expected JSON with custom_id and "
                            "response)") from None
        m = re.fullmatch(r"retort:(\d+/\d+):(\d+)", str(cid))
        if m is None:
            out.append((n, None, 0, None))
            continue
        resp, err = rec.get("response") or {}, rec.get("error")
        status = resp.get("status_code")
        if err or status != 200:
            kind = f"http {status}" if status else "batch error"
            detail = json.dumps(err or resp.get("body"))[:300]
            res = Failed(kind, f"{path}:{n}: {detail}", final=bool(status) and 400 <= status < 500 and status != 429)
        else:
            try:
                res = parse(resp["body"])
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise DataError(f"{path}:{n}: the response body is not a {teacher.api.endpoint} answer "
                                f"({type(e).__name__}: {e})") from None
            res.url = f"batch:{p.name}"
        out.append((n, m.group(1), int(m.group(2)), res))
    return out


def _read_batch(records: list, jobs: dict, on_reply) -> dict:
    """Feed checked batch results (`_load_batch`) to `on_reply`, as if each answer had just
    arrived; lines for requests already answered, or not asked by this set, are skipped."""
    stats = {"answers": 0, "skipped": 0, "failed": 0, "retries_needed": 0}
    for _, key, attempt, res in records:
        job = jobs.get(key) if key is not None else None
        if job is None or attempt != job.attempt:
            stats["skipped"] += 1
            continue
        stats["failed" if isinstance(res, Failed) else "answers"] += 1
        jobs.pop(key)
        if on_reply(job, res) is not None:
            stats["retries_needed"] += 1
    return stats


__all__ = ["run_api_traces"]

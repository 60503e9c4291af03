"""`retort traces` from a teacher behind an OpenAI-compatible API (`teacher.name=openai:MODEL`).

Requests go out concurrently (`teacher.api.max_in_flight`, rate limits, retries: `teachers.http`).
Nothing received is lost or paid for twice: each answer is appended to its shard's journal
(`journal-NNNNN.jsonl`, `retort.lm.data.traces.Journal`) the moment it arrives; a shard whose
answers are all in becomes a Parquet shard like any other (recorded in the manifest with its token
usage), then its journal goes. Killed at any moment (kill -9) and rerun with the same arguments,
the run requests exactly the answers it has not received; rerun when finished, it sends nothing.
One run is an `ApiTraces`: the set's state as attributes, one method per step. The requests can
also go out, and the answers come back, as OpenAI batch files (`retort.lm.traces_batch`).

What the server answers, each kept in the row: the text (and a reasoning server's
`reasoning_content` apart), the finish reason under the `on_length` policy, the token strings with
their log-probs and top alternatives (`api_tokens`), and token ids + the top-k blob when the token
map of `teacher.api.tokenizer` is checked. The manifest holds the policy, how the token map was
checked, a token ledger (the server's usage; a cost when prices are given) and the last run's
errors by kind.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict
from math import ceil
from pathlib import Path

import pyarrow as pa

from .. import __version__
from ..progress import ProgressLines
from .config import teacher_params
from .tasks.base import task_params
from ..errors import ApiError, DataError
from .data import topk as topk_codec
from .data.hashes import tokenizer_sha256
from .data.traces import Journal, TraceWriter, read_traces
from .teachers.api import ApiTeacher, check_key_env, key_variable
from .teachers.replies import Job, request_seed
from .teachers.http import Failed, summary
from .traces_batch import load_batch, read_batch, write_batch


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
    """`retort traces` of `examples` from the server `run.teacher` names (module docstring): into
    `run.out`, or with `batch_out` the requests written to a batch file, or with `batch_in` a batch
    file's results read in. Returns the trace directory (the batch file with `batch_out`)."""
    return ApiTraces(run, task, examples, console).sample(batch_out=batch_out, batch_in=batch_in)


class ApiTraces:
    """One `retort traces` run against a server. What it knows of the set it writes: per unfinished
    shard, the journal's last record of every request (`have`), the requests resolved (`resolved`:
    answered, dropped or refused for good), the answers paid for (`spent`), and the open journals;
    the answers received and the requests failed in this run."""

    def __init__(self, run, task, examples, console=None):
        check_key_env(run.teacher)
        self.run, self.task, self.examples, self.console = run, task, examples, console
        self.teacher = ApiTeacher(run.teacher)
        self.sp, self.api = run.sampling, run.teacher.api
        self.shard_prompts, self.n = run.shard_prompts, self.sp.n
        self.n_shards = ceil(len(examples) / self.shard_prompts)
        self.params = {**task_params(run.task, task), "teacher": teacher_params(run.teacher),
                       "teacher_weights_sha256": None, "sampling": asdict(self.sp), "split": run.split,
                       "n_prompts": len(examples), "seed": run.seed, "shard_prompts": self.shard_prompts}
        self.tok = self.teacher.tokenizer
        self.meta = {"retort_version": __version__, "task": task.name, "teacher": run.teacher.name,
                     "tokenizer_sha256": None, "vocab_size": len(self.tok) if self.tok is not None else None,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.greedy = self.sp.temperature == 0  # one request per prompt, its answer stored n times
        self.journals: dict[int, Journal] = {}
        self.received = self.tokens = 0
        self.failed: list = []
        self.pool = None
        self.advance = lambda k: None  # the progress bar's, while one is shown

    # -- the set on disk

    def open(self) -> None:
        """The trace writer (resumed when the set exists), and what the journals of its unfinished
        shards already hold."""
        # shards are assembled from their journals, so an unrecorded shard file is always redone ({} sizes)
        self.writer = TraceWriter(self.run.out, self.params, self.meta, {})
        self.out = out = self.writer.dir
        self.done = self.writer.done()
        for index in self.done:  # killed after a shard was recorded but before its journal went
            (out / journal_name(index)).unlink(missing_ok=True)
        self.todo = [i for i in range(self.n_shards) if i not in self.done]
        # what each unfinished shard's journal already holds: key -> its last record
        self.have: dict[int, dict[str, dict]] = {}
        self.spent: dict[int, _Ledger] = {}  # every answer received, retried ones included (what was paid for)
        for index in self.todo:
            self.have[index], self.spent[index] = {}, _Ledger()
            for r in Journal.read(out / journal_name(index)):
                self.have[index][r["k"]] = r
                self.spent[index].add(r["u"], r["s"] != "fail")
        self.resolved = {i: {k for k, r in self.have[i].items() if r["s"] in ("ok", "drop", "fail")} for i in self.todo}
        self.jobs_left = {i: [k for k in self.keys(i) if k not in self.resolved[i]] for i in self.todo}
        self.size = {i: len(list(self.keys(i))) for i in self.todo}  # answers each unfinished shard waits for
        self.total = sum(len(list(self.keys(i))) for i in range(self.n_shards))
        self.left = sum(len(v) for v in self.jobs_left.values())
        self.shard_of = {k: i for i in self.todo for k in self.keys(i)}
        # pyarrow's first table imports its pandas shim (~0.4 s): here, not while requests are in flight
        pa.Table.from_pydict({"x": [0]})
        self.shard_writes: list = []  # shards being written by the writer thread (`finish_shard`)
        self.shard_thread = None
        self.t0 = time.time()

    def keys(self, index: int):
        """The request keys ("prompt/sample") of shard `index`."""
        s = self.shard_prompts
        for e_i in range(index * s, min(len(self.examples), (index + 1) * s)):
            for j in range(1 if self.greedy else self.n):
                yield f"{e_i}/{j}"

    def jobs_todo(self):
        """The requests not yet resolved, each at its next attempt."""
        have, sp = self.have, self.sp
        return (Job(k, self.examples[int(k.split("/")[0])].prompt,
                    request_seed(sp.seed, k, have[i].get(k, {}).get("a", -1) + 1), have[i].get(k, {}).get("a", -1) + 1)
                for i in self.todo for k in self.jobs_left[i])

    # -- each answer

    def row_of(self, job_key: str, reply) -> dict:
        """The trace row of an answer."""
        api, tok, teacher, task, sp = self.api, self.tok, self.teacher, self.task, self.sp
        e = self.examples[int(job_key.split("/")[0])]
        answer_text = reply.text
        if reply.reasoning is not None:  # what the student learns: the reasoning, then the answer
            reply.text = api.reasoning_template.format(reasoning=reply.reasoning, answer=answer_text)
        ids = teacher.tokens.ids(reply) if teacher.tokens is not None and reply.tokens is not None else None
        row = {"prompt_id": e.id, "prompt": e.prompt, "completion": reply.text, "reasoning": reply.reasoning,
               "answer": task.extract_answer(answer_text, e.prompt), "reference": e.answer,
               "correct": task.verify(answer_text, e.answer, e.prompt), "finish_reason": reply.finish_reason,
               "difficulty": e.difficulty, "api_tokens": reply.tokens_json(), "topk": None,
               "teacher": self.run.teacher.name}
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

    def on_reply(self, job: Job, res):
        """Journal an answer (or a final refusal) the moment it arrives; a retry under the
        `on_length` policy is returned as the next Job; a shard whose answers are all in is written."""
        api = self.api
        index = self.shard_of[job.key]
        if isinstance(res, Failed):
            if res.final:  # the server refuses this request as it is (e.g. too long): not retried by a rerun
                rec = {"k": job.key, "a": job.attempt, "s": "fail", "u": [0, 0], "why": str(res)[:500]}
            else:
                self.failed.append(res)
                self.advance(0)
                return None
        else:
            self.received += 1
            self.tokens += res.completion_tokens or (len(res.tokens) if res.tokens else 0)
            status = "ok"
            if res.finish_reason == "length" and api.on_length != "keep":
                status = "retry" if api.on_length == "retry" and job.attempt < api.max_retries else "drop"
            rec = {"k": job.key, "a": job.attempt, "s": status, "u": [res.prompt_tokens, res.completion_tokens],
                   "url": res.url}
            if status == "ok":
                rec["row"] = self.row_of(job.key, res)
        j = self.journals.get(index) or self.journals.setdefault(index, Journal(self.out / journal_name(index)))
        j.append(rec)
        self.spent[index].add(rec["u"], rec["s"] != "fail")
        self.have[index][job.key] = rec
        if rec["s"] == "retry":
            return Job(job.key, job.prompt, request_seed(self.sp.seed, job.key, job.attempt + 1), job.attempt + 1)
        self.resolved[index].add(job.key)
        self.advance(1)
        if len(self.resolved[index]) == self.size[index]:
            self.finish_shard(index)
        return None

    def finish_shard(self, index: int) -> None:
        """Shard `index` from its journal: a Parquet shard with its token usage, then the journal goes."""
        have = self.have[index]
        rows = []
        for key in self.keys(index):
            rec = have[key]
            if rec["s"] != "ok":
                continue
            for j in (range(self.n) if self.greedy else [int(key.split("/")[1])]):
                row = dict(rec["row"], sample_idx=j)
                if row.get("topk"):
                    row["topk"] = bytes.fromhex(row["topk"])
                rows.append(row)
        # requests the server refused for good (e.g. a prompt too long): named, with its words
        refused = [{"prompt_id": self.examples[int(k.split("/")[0])].id, "sample_idx": int(k.split("/")[1]),
                    "why": have[k].get("why", "")} for k in self.keys(index) if have[k]["s"] == "fail"]
        extra = {"usage": self.spent[index].dict(), "refused": refused,
                 "dropped": sum(1 for r in have.values() if r["s"] in ("drop", "fail"))}
        journal = self.journals.pop(index, None)

        def write():
            # the Parquet file, its fsync and the manifest (~20 ms a shard) in one writer thread, so that
            # the event loop keeps answering replies and sending requests meanwhile; the journal goes
            # only once the shard is recorded, so a kill at any moment loses nothing
            self.writer.write_shard(index, rows, extra=extra)
            if journal is not None:
                journal.close()
            (self.out / journal_name(index)).unlink(missing_ok=True)

        for f in [f for f in self.shard_writes if f.done()]:
            self.shard_writes.remove(f)
            f.result()  # a shard that could not be written stops the run here
        if self.shard_thread is None:
            from concurrent.futures import ThreadPoolExecutor

            self.shard_thread = ThreadPoolExecutor(1, thread_name_prefix="retort-shards")
        self.shard_writes.append(self.shard_thread.submit(write))

    def close_journals(self) -> None:
        """Wait for the shards being written (their errors raised here), then close the other journals."""
        try:
            while self.shard_writes:
                self.shard_writes.pop(0).result()
        finally:
            if self.shard_thread is not None:
                self.shard_thread.shutdown(wait=True)
                self.shard_thread = None
            for j in self.journals.values():
                j.close()
            self.journals.clear()

    def ledger(self) -> dict:
        """Every answer received over all runs: finished shards' usage (their journals are gone)
        from the manifest, unfinished ones' from their journals."""
        tot = _Ledger()
        for info in self.writer.manifest["shards"].values():
            u = info.get("usage") or {}
            tot.responses += u.get("responses", 0)
            tot.prompt_tokens += u.get("prompt_tokens", 0)
            tot.completion_tokens += u.get("completion_tokens", 0)
        for i in self.todo:
            if str(i) not in self.writer.manifest["shards"]:
                tot.responses += self.spent[i].responses
                tot.prompt_tokens += self.spent[i].prompt_tokens
                tot.completion_tokens += self.spent[i].completion_tokens
        return tot.dict()

    # -- the server

    async def serve(self) -> None:
        """Check the token map against the server, then request every answer not yet held."""
        api, teacher, tok, writer = self.api, self.teacher, self.tok, self.writer
        async with teacher.pool(seed=self.run.seed) as pool:
            check = await teacher.check_tokenizer(pool)
            tmap = {"tokenizer": api.tokenizer, "check": check, "ids": teacher.tokens is not None}
            recorded = writer.manifest.get("token_map")
            if recorded is not None and recorded.get("ids") != tmap["ids"] and (self.done or any(self.have.values())):
                raise DataError(f"{self.out}: its answers so far were stored {'with' if recorded['ids'] else 'without'} "
                                f"token ids, but now the token map is {check!r}; the server's model changed? Use "
                                "another output directory")
            # where the server was (not part of the set's identity: it may move): what `curate
            # --mixed-policy` asks when it continues student prefixes with this teacher; the key's
            # variable only when it is set (a name that is not set may be a key pasted in its place)
            writer.update(token_map=tmap, tokenizer_sha256=tokenizer_sha256(tok) if tmap["ids"] else None,
                          api_server={"base_url": api.base_url, "key_env": key_variable(api)})
            if self.console is not None and (tok is None or not tmap["ids"]):
                self.console.print(f"traces: token ids not mapped ({check}); rows keep text and the server's token "
                                   "strings; token-level KD from this set will be refused")
            await self.requests(pool)

    async def requests(self, pool) -> None:
        """Send the requests, a progress bar (or `retort.progress` lines) showing the answers."""
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        console, sp = self.console, self.sp
        interactive = console is not None and console.is_terminal
        progress = Progress(TextColumn("[bold]traces"), BarColumn(), MofNCompleteColumn(), TextColumn("answers"),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
                            TimeRemainingColumn(), disable=not interactive)
        # one row per answer: done/total answers (rows), their rate and the time left (`retort.progress`)
        lines = ProgressLines(console, "traces", self.total, "answers", done=self.total - self.left,
                              enabled=console is not None and not interactive)
        with progress:
            bar = progress.add_task("traces", total=self.total, completed=self.total - self.left, rate="")

            def advance(k):
                el = max(1e-9, time.time() - self.t0)
                rate = f"{self.tokens / el:.0f} tok/s"
                progress.update(bar, advance=k, rate=rate)
                lines.update(self.total - self.left + self.received, rate)
            self.advance = advance
            # shards already begun first, so their journals close early
            for index in self.todo:
                if index not in self.journals and len(self.resolved[index]) == self.size[index]:
                    self.finish_shard(index)  # all answers were in; killed before the shard was written
            try:
                await self.teacher.run(self.jobs_todo(), self.on_reply, pool=pool, max_tokens=sp.max_new_tokens,
                                       temperature=sp.temperature, top_p=sp.top_p, stop=sp.stop or None, topk=sp.topk)
            finally:
                self.close_journals()
                self.writer.update(ledger=_cost(self.ledger(), self.api),
                                   last_run={"requests": pool.requests, "answers": self.received,
                                             "seconds": round(time.time() - self.t0, 3),
                                             "errors": dict(pool.errors), "by_url": dict(pool.sent)})
                self.pool = pool

    # -- a batch file's results

    def from_batch(self, batch_in, records: list) -> bool:
        """Feed the checked results of a batch file (`load_batch`) in; False when answers are still
        missing afterwards (said on the console)."""
        api, tok, teacher = self.api, self.tok, self.teacher
        self.advance = lambda k: None
        self.writer.update(token_map={"tokenizer": api.tokenizer, "ids": teacher.tokens is not None,
                                      "check": "by bytes (batch results: no server to ask)" if tok is not None else
                                      teacher.token_check},
                           tokenizer_sha256=tokenizer_sha256(tok) if teacher.tokens is not None else None)
        stats = read_batch(records, {j.key: j for j in self.jobs_todo()}, self.on_reply)
        self.close_journals()
        self.writer.update(ledger=_cost(self.ledger(), api), last_run={"batch_in": str(batch_in), **stats})
        missing = sum(self.size[i] - len(self.resolved[i]) for i in self.todo
                      if str(i) not in self.writer.manifest["shards"])
        if missing:
            if self.console is not None:
                self.console.print(f"traces: {stats['answers']} answers read from {batch_in} ({stats['skipped']} "
                                   f"already held, {stats['failed']} failed); {missing} still missing: write them with "
                                   "--batch-out or rerun against a server")
            return False
        self.received = stats["answers"]
        return True

    # -- the whole run

    def sample(self, *, batch_out=None, batch_in=None) -> Path:
        sp, api, console = self.sp, self.api, self.console
        # a batch's results are read and checked before anything is written
        batch_records = load_batch(batch_in, self.teacher, sp) if batch_in is not None else None
        if batch_out is not None:
            from ..paths import output_file

            output_file(batch_out, "--batch-out")  # a directory, or a path under a file: refused now
        self.open()
        out, total, left = self.out, self.total, self.left
        if batch_out is not None:
            return write_batch(batch_out, self.jobs_todo(), self.teacher, sp, console, total, left)
        if batch_in is not None:
            if not self.from_batch(batch_in, batch_records):
                return out
        elif console is not None and left < total:
            console.print(f"traces: {total - left} of {total} answers already in {out}; requesting the other {left}")
        try:
            if batch_in is None and left:
                asyncio.run(self.serve())
            elif batch_in is None:  # every answer is in: not one request, not even the tokenizer probe
                for index in self.todo:  # answers all journaled, killed before their shard was written
                    self.finish_shard(index)
                self.close_journals()
                self.writer.update(ledger=_cost(self.ledger(), api),
                                   last_run={"requests": 0, "answers": 0, "seconds": 0.0, "errors": {}, "by_url": {}})
        except ApiError as e:
            raise ApiError(f"{e}; the answers received are kept in {out}: rerun the same command to continue") from None
        except KeyboardInterrupt:
            if console is not None:
                console.print(f"traces: stopped; every answer received is kept in {out}; rerun the same command to "
                              "continue")
            raise
        return self.finish()

    def finish(self) -> Path:
        """The set's stats and manifest, once every answer is in; refused (answers kept) if some failed."""
        api, console, out, pool = self.api, self.console, self.out, self.pool
        errs = summary(pool.errors) if pool is not None else "none"
        if self.failed:
            # the first failure of each kind in full: the URL, and the server's words or the start of
            # the body it sent (a kind alone does not say which server, or what came back)
            first: dict = {}
            for f in self.failed:
                first.setdefault(f.kind, f)
            said = "; ".join(f"{kind}: {re.sub(r' [(]after [0-9]+ retries[)]$', '', f.detail)}"
                             for kind, f in sorted(first.items()))
            raise ApiError(f"traces: {len(self.failed)} requests failed after {api.max_retries} retries "
                           f"({said}; every failed attempt: {errs}); the {self.received} answers "
                           f"received are kept in {out}: rerun the same command to request the rest")
        from .curate import trace_stats

        self.writer.finish(trace_stats(read_traces(out, allow_incomplete=True)))
        m = self.writer.manifest
        st = m["stats"]
        if console is not None:
            led = m["ledger"]
            cost = f", cost {led['cost']:.4f}" if "cost" in led else ""
            console.print(f"traces: {st.get('rows', 0)} rows ({st.get('prompts', 0)} prompts), accuracy "
                          f"{st.get('accuracy', float('nan')):.3f}; this run: {pool.requests if pool else 0} requests, "
                          f"{self.received} answers, failed attempts: {errs}; ledger {led['prompt_tokens']} prompt + "
                          f"{led['completion_tokens']} completion tokens{cost}; in {out}")
        return out


__all__ = ["ApiTraces", "run_api_traces"]

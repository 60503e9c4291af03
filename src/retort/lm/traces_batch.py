"""OpenAI batch files for `retort traces` from a server: the requests not yet answered written out
(`write_batch`, for `vllm run-batch` or a provider's batch API; nothing is sent), and a batch
output file read back (`load_batch`: checked whole before anything is written; `read_batch`: fed
to the run as if each answer had just arrived). A request's `custom_id` names its key and attempt.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import DataError
from .teachers.http import Failed
from .teachers.replies import Job


def _custom_id(job: Job) -> str:
    return f"retort:{job.key}:{job.attempt}"


def write_batch(path, jobs, teacher, sp, console, total, left) -> Path:
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


def load_batch(path, teacher, sp) -> list:
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
                                f"({type(e).__name__}: {e}; body: {json.dumps(resp.get('body'))[:200]})") from None
            res.url = f"batch:{p.name}"
        out.append((n, m.group(1), int(m.group(2)), res))
    return out


def read_batch(records: list, jobs: dict, on_reply) -> dict:
    """Feed checked batch results (`load_batch`) to `on_reply`, as if each answer had just
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


__all__ = ["load_batch", "read_batch", "write_batch"]

"""`retort traces` from an OpenAI-compatible server that misbehaves (`tests/apiserver.py`): every
answer stored once, nothing paid for twice, every failed attempt counted by kind, one-line errors.

The server answers deterministically (`answer_text(prompt, seed)`) and logs every request, so a test
knows which request got which answer; runs go through the real CLI (`retort.cli.main`)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from apiserver import ApiServer, answer_text, reasoning_text
from conftest import tiny_overrides

from retort.cli import main
from retort.config import load_config
from retort.lm.config import TracesRun
from retort.errors import ApiError, DataError
from retort.lm.data import topk as topk_codec
from retort.lm.data.traces import read_manifest, read_traces
from retort.lm.tasks import get_task
from retort.lm.teachers import TraceStoreTeacher, http
from retort.lm.teachers.api import Job, request_id, request_seed

BASE = {"teacher.name": "openai:m", "task.name": "modchain", "n_prompts": 12, "shard_prompts": 4,
        "sampling.n": 2, "teacher.api.backoff_s": 0.01}
N_KEYS = 24  # 12 prompts x 2 samples


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    """Messages are matched whole: rich would wrap them at the terminal width."""
    monkeypatch.setenv("COLUMNS", "1000")


def _traces(capsys, out, url, **extra) -> tuple[int, str]:
    """`retort traces` through the CLI; (exit status, stdout + stderr)."""
    args = {**BASE, "out": str(out), "teacher.api.base_url": url, **extra}
    rc = main(["traces", *[f"{k}={v}" for k, v in args.items()]])
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def _examples(n=12, seed=0):
    cfg = load_config(TracesRun, None, ["task.name=modchain"])
    return get_task(cfg.task).examples("train", n, seed)


def _index(n=12) -> dict:
    return {e.id: i for i, e in enumerate(_examples(n))}


def _rows(out) -> list[dict]:
    return read_traces(out).to_pylist()


def _rid(key: str, attempt: int = 0) -> str:
    """The X-Request-ID of the request for `key` (`{prompt index}/{sample}`) at an attempt."""
    return request_id(Job(key, "", 0, attempt))


_KEY_OF = {_rid(f"{i}/{j}", a): f"{i}/{j}" for i in range(40) for j in range(2) for a in range(8)}


def _key(rid: str) -> str:
    """The key a request was for, from its X-Request-ID."""
    return _KEY_OF[rid]


def _row_keys(out, n=12) -> list[str]:
    idx = _index(n)
    return [f"{idx[r['prompt_id']]}/{r['sample_idx']}" for r in _rows(out)]


def _summary(rows) -> list[tuple]:
    return sorted((r["prompt_id"], r["sample_idx"], r["completion"], r["finish_reason"], r["api_tokens"]) for r in rows)


def _ledger_of(answers) -> dict:
    return {"responses": len(answers), "prompt_tokens": sum(e["usage"]["prompt_tokens"] for e in answers),
            "completion_tokens": sum(e["usage"]["completion_tokens"] for e in answers)}


def _journal_records(out) -> list[dict]:
    """The journals' records, read without touching them (a torn last line is skipped)."""
    recs = []
    for p in sorted(Path(out).glob("journal-*.jsonl")):
        for line in p.read_bytes().split(b"\n"):
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass
    return recs


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- a, b: the clean path


def test_a_clean_run_stores_each_answer_once_as_the_server_sent_it(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer() as s:
        rc, text = _traces(capsys, out, s.url)
    assert rc == 0, text
    rows = _rows(out)
    keys = _row_keys(out)
    assert len(rows) == N_KEYS and len(set(keys)) == N_KEYS
    sent = {e["rid"]: e for e in s.answered()}
    assert len(sent) == N_KEYS  # one request per (prompt, sample), each its own id
    assert len({e["seed"] for e in sent.values()}) == N_KEYS
    for r, k in zip(rows, keys):
        e = sent[_rid(k)]
        assert e["seed"] == request_seed(0, k, 0)
        assert e["prompt"] == r["prompt"] and e["body"]["messages"] == [{"role": "user", "content": r["prompt"]}]
        assert r["completion"] == e["text"] == answer_text(r["prompt"], e["seed"])
        assert r["finish_reason"] == "stop" and r["reasoning"] is None
        toks = json.loads(r["api_tokens"])
        assert toks["t"] == list(e["text"]) and toks["lp"] == [-0.1] * len(e["text"])
        assert r["completion_ids"] == [] and r["n_tokens"] == len(e["text"])  # no tokenizer: no ids
    m = read_manifest(out)
    assert m["complete"] and m["ledger"] == _ledger_of(s.answered())
    assert m["last_run"]["requests"] == len(s.completions()) == N_KEYS
    assert m["last_run"]["errors"] == {}
    assert sum(sh["usage"]["responses"] for sh in m["shards"].values()) == N_KEYS
    assert not list(out.glob("journal-*"))
    assert "token-level KD from this set will be refused" in " ".join(text.split())


def test_b_rerun_of_a_finished_set_sends_nothing(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer() as s:
        assert _traces(capsys, out, s.url)[0] == 0
        before, ledger = _summary(_rows(out)), read_manifest(out)["ledger"]
        n = len(s.log)
        # prices are not what identifies the samples: a rerun may add them, and the ledger gets a cost
        rc, text = _traces(capsys, out, s.url, **{"teacher.api.price_prompt": 2.0,
                                                  "teacher.api.price_completion": 10.0})
    assert rc == 0, text
    assert len(s.log) == n  # not one request
    m = read_manifest(out)
    assert m["last_run"]["requests"] == 0
    assert m["ledger"] == {**ledger, "cost": round((ledger["prompt_tokens"] * 2.0 + ledger["completion_tokens"] * 10.0)
                                                   / 1e6, 6), "prices_per_million": {"prompt": 2.0, "completion": 10.0}}
    assert _summary(_rows(out)) == before


def test_b_an_api_sets_n_prompts_is_kept_on_resume_with_a_clear_refusal(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer() as s:
        assert _traces(capsys, out, s.url)[0] == 0
        n = len(s.log)
        rc, text = _traces(capsys, out, s.url, n_prompts=8)
    assert rc == 2 and len(s.log) == n and read_manifest(out)["params"]["n_prompts"] == 12
    assert "holds traces of n_prompts=12; an API teacher's set keeps its size (rerun with n_prompts=12" in text


def test_b_greedy_asks_once_per_prompt_and_stores_it_n_times(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer() as s:
        rc, text = _traces(capsys, out, s.url, **{"sampling.temperature": 0})
    assert rc == 0, text
    assert sorted(_key(e["rid"]) for e in s.completions()) == sorted(f"{i}/0" for i in range(12))
    assert all(e["body"]["temperature"] == 0 for e in s.completions())
    rows = _rows(out)
    assert len(rows) == N_KEYS and len({(r["prompt_id"], r["sample_idx"]) for r in rows}) == N_KEYS
    by_prompt: dict = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], set()).add(r["completion"])
    assert all(len(c) == 1 for c in by_prompt.values())
    assert read_manifest(out)["ledger"] == _ledger_of(s.answered())  # 12 answers, paid once


# ---------------------------------------------------------------- c-e: faults


def test_c_every_fault_kind_is_retried_and_counted(tmp_path, capsys):
    with ApiServer() as clean:
        assert _traces(capsys, tmp_path / "clean", clean.url)[0] == 0
    # the first request goes alone; after it, the faults fall on different requests
    plan = {"ok": 1, "429": 2, "500": 2, "timeout": 1, "truncated": 2, "garbage": 2}
    out = tmp_path / "t"
    with ApiServer(faults=plan, timeout_sleep=1.5) as s:
        rc, text = _traces(capsys, out, s.url, **{"teacher.api.timeout_s": 1.0})
    assert rc == 0, text
    assert [e["fault"] for e in s.completions()][:10] == [None] + ["429"] * 2 + ["500"] * 2 + ["timeout"] + \
        ["truncated"] * 2 + ["garbage"] * 2
    assert _summary(_rows(out)) == _summary(_rows(tmp_path / "clean"))
    m = read_manifest(out)
    assert m["last_run"]["errors"] == {"http 429": 2, "http 500": 2, "timeout": 1, "connection": 2,
                                       "malformed body": 2}
    assert m["last_run"]["requests"] == len(s.completions()) == N_KEYS + 9
    assert m["ledger"] == read_manifest(tmp_path / "clean")["ledger"] == _ledger_of(s.answered())
    assert "9 x" not in text and "2 x http 429" in text


def test_d_retries_exhausted_keeps_what_came_and_the_rerun_asks_only_the_rest(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer(faults={"ok": 5, "500": 10**9}) as bad:
        rc, text = _traces(capsys, out, bad.url, **{"teacher.api.max_retries": 1})
    assert rc == 2
    lines = text.strip().splitlines()
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1 and err[0] == lines[-1]
    assert "19 requests failed after 1 retries (http 500" in err[0] and "38 x http 500" in err[0]
    assert "5 answers received are kept" in err[0]
    stored = {r["k"] for r in _journal_records(out) if r["s"] == "ok"}
    assert stored == {_key(e["rid"]) for e in bad.answered()} and len(stored) == 5
    with pytest.raises(DataError, match="not finished"):
        read_traces(out)
    assert read_manifest(out)["last_run"]["errors"] == {"http 500": 38}

    with ApiServer() as good:
        rc, text = _traces(capsys, out, good.url, **{"teacher.api.max_retries": 1})
    assert rc == 0, text
    asked = [_key(e["rid"]) for e in good.completions()]
    assert len(asked) == len(set(asked)) == N_KEYS - 5 and not stored & set(asked)
    assert sorted(_row_keys(out)) == sorted(f"{i}/{j}" for i in range(12) for j in range(2))
    assert read_manifest(out)["ledger"] == _ledger_of(bad.answered() + good.answered())


@pytest.mark.parametrize("fault, says", [
    ("garbage", ("malformed body: {url}/chat/completions: JSONDecodeError: Expecting value: line 1 column 1 "
                 "(char 0) (body: '<html>this is not JSON')")),
    ("truncated", "connection: {url}/chat/completions: ClientPayloadError: Response payload is not completed"),
    ("dead", "connection: {url}/chat/completions: ClientConnector"),
])
def test_d_retries_exhausted_name_the_url_and_quote_what_came_back(tmp_path, capsys, fault, says):
    """After the retries, a lost connection or a body that is not an answer is said as a refusal
    is: where the request went, and what came back (not only its kind)."""
    if fault == "dead":  # nothing listens there: every request fails to connect
        url = f"http://127.0.0.1:{_free_port()}/v1"
        rc, text = _traces(capsys, tmp_path / "t", url, **{"teacher.api.max_retries": 1})
        n, received = N_KEYS, 0
    else:
        with ApiServer(faults={"ok": 5, fault: 10**9}) as s:
            rc, text = _traces(capsys, tmp_path / "t", s.url, **{"teacher.api.max_retries": 1})
        url, n, received = s.url, N_KEYS - 5, 5
    assert rc == 2
    lines = text.strip().splitlines()
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1 and err[0] == lines[-1]
    assert f"{n} requests failed after 1 retries ({says.format(url=url)}" in err[0], err[0]
    assert f"every failed attempt: {2 * n} x {says.split(':')[0]}" in err[0]
    assert f"the {received} answers received are kept" in err[0]


def _partial(capsys, out, **extra) -> set:
    """A run whose server answers 5 requests and then fails every one: the keys it stored."""
    with ApiServer(faults={"ok": 5, "500": 10**9}, tokenizer=extra.pop("server_tok", None)) as bad:
        rc, text = _traces(capsys, out, bad.url, **{"teacher.api.max_retries": 0, **extra})
    assert rc == 2 and "19 requests failed after 0 retries" in text, text
    return {r["k"] for r in _journal_records(out) if r["s"] == "ok"}


def test_d_a_torn_journal_line_is_cut_and_the_run_completes(tmp_path, capsys):
    out = tmp_path / "t"
    stored = _partial(capsys, out)
    journal = max(out.glob("journal-*.jsonl"))
    with open(journal, "ab") as fh:
        fh.write(b'{"k":"11/1","a":0,"s":"ok","u":[17,7],"row":{"prompt_id":"mod')  # killed mid-write
    with ApiServer() as good:
        rc, text = _traces(capsys, out, good.url)
    assert rc == 0, text
    assert {_key(e["rid"]) for e in good.completions()} == set(ALL_KEYS) - stored
    assert len(_rows(out)) == N_KEYS and read_manifest(out)["ledger"]["responses"] == N_KEYS


def test_d_a_resume_with_other_sampling_settings_is_refused_before_any_request(tmp_path, capsys):
    out = tmp_path / "t"
    _partial(capsys, out)
    with ApiServer() as s:
        rc, text = _traces(capsys, out, s.url, **{"teacher.api.on_length": "drop"})
    assert rc == 2 and "other arguments (differ at teacher.api.on_length)" in text
    assert not s.log


def test_d_a_resume_whose_token_map_changed_is_refused(tmp_path, capsys, char_tok_dir):
    d, tok = char_tok_dir
    out = tmp_path / "t"
    _partial(capsys, out, server_tok=tok, **{"teacher.api.tokenizer": str(d)})
    assert read_manifest(out)["token_map"]["ids"] is True
    with ApiServer(tokenizer=tok, tokenize_offset=1) as s:
        rc, text = _traces(capsys, out, s.url, **{"teacher.api.tokenizer": str(d)})
    assert rc == 2 and "stored with token ids, but now the token map is" in text and "MISMATCH" in text
    assert not s.completions()


def test_d_a_dead_server_trips_the_breaker_and_stops_issuing(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer(faults={"500": 10**9}) as s:
        rc, text = _traces(capsys, out, s.url, **{"teacher.api.max_retries": 0, "teacher.api.max_in_flight": 1})
    assert rc == 2
    assert "9 requests in a row failed for good, the last: http 500" in text  # max_in_flight + 8
    assert "rerun the same command to continue" in text
    assert 9 <= len(s.completions()) < N_KEYS


def test_a_refused_first_request_stops_the_run_before_the_others_go(tmp_path, capsys):
    with ApiServer(faults={"401": 10**9}) as s:
        rc, text = _traces(capsys, tmp_path / "t", s.url)
    assert rc == 2 and "http 401" in text and "invalid key" in text
    assert len(s.completions()) == 1  # the first request goes alone


def test_a_refused_key_at_the_first_request_names_the_key_variable(tmp_path, capsys):
    with ApiServer(faults={"401": 10**9}) as s:
        rc, text = _traces(capsys, tmp_path / "t", s.url)
    assert rc == 2 and "http 401" in text
    assert "$OPENAI_API_KEY" in text and "teacher.api.endpoint" not in text


def test_e_a_final_400_is_recorded_as_failed_and_not_asked_again(tmp_path, capsys):
    ex = _examples()
    refused = ex[5]
    assert sum(refused.prompt in e.prompt for e in ex) == 1
    out = tmp_path / "t"
    with ApiServer(fail_400_containing=refused.prompt) as s:
        rc, text = _traces(capsys, out, s.url)
        assert rc == 0, text
        rows = _rows(out)
        assert len(rows) == N_KEYS - 2 and refused.id not in {r["prompt_id"] for r in rows}
        m = read_manifest(out)
        assert m["last_run"]["errors"] == {"http 400": 2}
        assert [m["shards"][i]["dropped"] for i in ("0", "1", "2")] == [0, 2, 0]
        assert m["shards"]["1"]["rows"] == 6
        # named in the manifest with the server's words, and not counted as answers in the ledger
        assert [(r["prompt_id"], r["sample_idx"]) for r in m["shards"]["1"]["refused"]] == \
            [(refused.id, 0), (refused.id, 1)]
        assert all("this prompt is refused" in r["why"] for r in m["shards"]["1"]["refused"])
        assert m["ledger"]["responses"] == N_KEYS - 2
        assert len([e for e in s.completions() if e["fault"] == "400"]) == 2  # never retried
        n = len(s.log)
        assert _traces(capsys, out, s.url)[0] == 0
        assert len(s.log) == n


# ---------------------------------------------------------------- f: finish_reason "length"


def _length_if(seed):
    return seed % 2 == 0


def _seed_even(key, attempt):
    return _length_if(request_seed(0, key, attempt))


ALL_KEYS = [f"{i}/{j}" for i in range(12) for j in range(2)]


def test_f_on_length_keep_stores_the_cut_rows(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer(length_if=_length_if) as s:
        assert _traces(capsys, out, s.url, **{"teacher.api.on_length": "keep"})[0] == 0
    cut = {k for k in ALL_KEYS if _seed_even(k, 0)}
    assert 0 < len(cut) < N_KEYS
    rows = dict(zip(_row_keys(out), _rows(out)))
    assert len(rows) == N_KEYS
    assert {k for k, r in rows.items() if r["finish_reason"] == "length"} == cut
    assert sum(sh["dropped"] for sh in read_manifest(out)["shards"].values()) == 0


def test_f_on_length_drop_stores_none_of_them_and_counts_them(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer(length_if=_length_if) as s:
        assert _traces(capsys, out, s.url, **{"teacher.api.on_length": "drop"})[0] == 0
    cut = {k for k in ALL_KEYS if _seed_even(k, 0)}
    assert set(_row_keys(out)) == set(ALL_KEYS) - cut
    assert {r["finish_reason"] for r in _rows(out)} == {"stop"}
    m = read_manifest(out)
    for i, sh in m["shards"].items():
        assert sh["dropped"] == sum(1 for k in cut if int(k.split("/")[0]) // 4 == int(i))
    assert len(s.completions()) == N_KEYS  # not retried
    assert m["ledger"] == _ledger_of(s.answered())  # the dropped answers were paid for too


def _retry_run(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer(length_if=_length_if) as s:
        rc, text = _traces(capsys, out, s.url, **{"teacher.api.on_length": "retry", "teacher.api.max_retries": 1})
    assert rc == 0, text
    return out, s


def test_f_on_length_retry_asks_again_with_another_seed(tmp_path, capsys):
    out, s = _retry_run(tmp_path, capsys)
    by_key: dict = {}
    for e in s.completions():
        by_key.setdefault(_key(e["rid"]), []).append(e)
    for k in ALL_KEYS:
        sent = by_key[k]
        want = 2 if _seed_even(k, 0) else 1
        assert [e["rid"] for e in sent] == [_rid(k, a) for a in range(want)]
        assert [e["seed"] for e in sent] == [request_seed(0, k, a) for a in range(want)]
        assert len({e["seed"] for e in sent}) == want  # the retry is another sample, not the same one
    dropped = {k for k in ALL_KEYS if _seed_even(k, 0) and _seed_even(k, 1)}  # max_retries=1
    rows = dict(zip(_row_keys(out), _rows(out)))
    assert set(rows) == set(ALL_KEYS) - dropped
    assert {r["finish_reason"] for r in rows.values()} == {"stop"}
    for k, r in rows.items():
        a = 1 if _seed_even(k, 0) else 0
        assert r["completion"] == answer_text(r["prompt"], request_seed(0, k, a))
    assert sum(sh["dropped"] for sh in read_manifest(out)["shards"].values()) == len(dropped)


def test_f_on_length_retry_ledger_counts_every_answer_received(tmp_path, capsys):
    out, s = _retry_run(tmp_path, capsys)
    assert len(s.answered()) > N_KEYS
    assert read_manifest(out)["ledger"] == _ledger_of(s.answered())


# ---------------------------------------------------------------- g: kill -9


def _stored_keys(out, s=4, n=2) -> set:
    """Keys the trace set holds now: every key of a recorded shard, and resolved journal records."""
    keys = {r["k"] for r in _journal_records(out) if r.get("s") in ("ok", "drop", "fail")}
    try:
        shards = json.loads((Path(out) / "manifest.json").read_text())["shards"]
    except (OSError, ValueError):
        shards = {}
    for i in map(int, shards):
        keys |= {f"{p}/{j}" for p in range(i * s, (i + 1) * s) for j in range(n)}
    return keys


def _log_lines(path) -> list[dict]:
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_bytes().split(b"\n"):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_g_kill_9_at_random_moments_loses_nothing_and_asks_nothing_twice(tmp_path):
    log = tmp_path / "server.jsonl"
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("apiserver.py")), "--port", "0",
                               "--log", str(log), "--delay", "0.05"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        out = tmp_path / "t"
        n_prompts = 40
        args = {**BASE, "out": str(out), "teacher.api.base_url": f"http://127.0.0.1:{port}/v1",
                "n_prompts": n_prompts, "teacher.api.max_in_flight": 4}
        cmd = [sys.executable, "-m", "retort.cli", "traces", *[f"{k}={v}" for k, v in args.items()]]
        env = {**os.environ, "COLUMNS": "1000"}
        rng = random.Random(20240611)
        checkpoints = []  # (server log lines so far, keys stored then)
        kills = 0
        for _ in range(5):
            before = len(_stored_keys(out))
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 60
            while len(_stored_keys(out)) <= before and proc.poll() is None and time.time() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.15))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            checkpoints.append((len(_log_lines(log)), _stored_keys(out)))
        assert kills == 5  # else the run finished early and this test proves less
        assert 0 < len(checkpoints[-1][1]) < n_prompts * 2
        final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert final.returncode == 0, final.stderr
    finally:
        server.kill()
        server.wait()
    requests = _log_lines(log)
    for n_before, stored in checkpoints:
        again = [e["rid"] for e in requests[n_before:] if e["path"].endswith("completions") and _key(e["rid"]) in stored]
        assert not again, f"asked again for answers already stored: {again}"
    idx = _index(n_prompts)
    rows = read_traces(out).to_pylist()
    keys = [(r["prompt_id"], r["sample_idx"]) for r in rows]
    assert len(rows) == n_prompts * 2 and len(set(keys)) == len(keys)
    for r in rows:  # each row is the answer its (prompt, sample)'s first request got
        k = f"{idx[r['prompt_id']]}/{r['sample_idx']}"
        assert r["completion"] == answer_text(r["prompt"], request_seed(0, k, 0))
    prompts = {e.id: e.prompt for e in _examples(n_prompts)}
    assert read_manifest(out)["ledger"] == {"responses": n_prompts * 2,
                                            "prompt_tokens": 2 * sum(len(p) for p in prompts.values()),
                                            "completion_tokens": 7 * n_prompts * 2}
    assert not list(out.glob("journal-*"))


# ---------------------------------------------------------------- h: the key


def test_h_the_key_is_sent_and_written_nowhere(tmp_path, capsys, monkeypatch):
    secret = f"sk-test-{os.getpid()}-{time.time_ns()}"
    monkeypatch.setenv("MY_TEST_KEY", secret)
    out = tmp_path / "t"
    with ApiServer() as s:
        rc, text = _traces(capsys, out, s.url, **{"teacher.api.key_env": "MY_TEST_KEY"})
    assert rc == 0, text
    assert {e["auth"] for e in s.completions()} == {f"Bearer {secret}"}
    assert secret not in text
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and not any(secret.encode() in p.read_bytes() for p in files)


def test_h_a_key_put_where_its_variable_name_goes_is_refused_unrepeated(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer() as s:
        rc, text = _traces(capsys, out, s.url, **{"teacher.api.key_env": "sk-abc123"})
    assert rc == 2 and "teacher.api.key_env" in text
    assert "sk-abc123" not in text
    assert not s.log and not out.exists()


def test_h_no_key_variable_set_sends_no_authorization(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ApiServer() as s:
        assert _traces(capsys, tmp_path / "t", s.url)[0] == 0
    assert {e["auth"] for e in s.completions()} == {None}


# keys pasted where the variable's name goes; the first two also look like variable names
PASTED_KEYS = ["hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0",
               "sk-proj-Zy9Xw8Vu7Ts6Rq5Po4Nm3Lk2"]


def _holding(root: Path, secret: str) -> list:
    """Every file under `root` whose bytes hold `secret`."""
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.parametrize("key", PASTED_KEYS)
def test_h_a_key_in_key_env_is_refused_and_written_or_said_nowhere(tmp_path, capsys, monkeypatch, key):
    monkeypatch.delenv(key, raising=False)
    with ApiServer() as s:
        rc, text = _traces(capsys, tmp_path / "t", s.url, **{"teacher.api.key_env": key})
        assert rc == 2 and "teacher.api.key_env names no environment variable that is set" in text
        assert "NAME of the variable holding the key" in text
        # a run that would use the server online (kd scores through it) is refused the same way,
        # before its config.yaml is written
        rc = main(["train", *tiny_overrides(tmp_path / "r", steps=1, **{
            "method": "kd", "teacher.name": "openai:m", "teacher.api.base_url": s.url,
            "teacher.api.key_env": key, "teacher.api.max_retries": 0})])
        cap = capsys.readouterr()
        assert rc == 2 and "teacher.api.key_env names no environment variable" in cap.err
        # a misspelled key name is no way around it
        rc = main(["traces", f"out={tmp_path / 't2'}", "teacher.name=openai:m", f"teacher.api.key={key}"])
        cap2 = capsys.readouterr()
        assert rc == 2 and "unknown key 'teacher.api.key'" in cap2.err
    assert not s.log
    for said in (text, cap.out, cap.err, cap2.out, cap2.err):
        assert key not in said
    assert not _holding(tmp_path, key)
    assert not (tmp_path / "t").exists() and not (tmp_path / "r").exists()


def test_h_the_manifest_names_the_key_variable_only_when_it_is_set(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MY_TEST_KEY", "sk-set-in-the-environment")
    with ApiServer() as s:
        assert _traces(capsys, tmp_path / "set", s.url, **{"teacher.api.key_env": "MY_TEST_KEY"})[0] == 0
        assert _traces(capsys, tmp_path / "default", s.url)[0] == 0  # the default, unset: no key
        assert _traces(capsys, tmp_path / "none", s.url, **{"teacher.api.key_env": ""})[0] == 0  # no key
    assert {e["auth"] for e in s.completions()} == {"Bearer sk-set-in-the-environment", None}
    assert read_manifest(tmp_path / "set")["api_server"]["key_env"] == "MY_TEST_KEY"
    assert read_manifest(tmp_path / "default")["api_server"]["key_env"] is None
    assert read_manifest(tmp_path / "none")["api_server"]["key_env"] is None


def test_h_a_refusal_without_a_key_says_none_was_sent(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ApiServer(faults={"401": 10**9}) as s:
        rc, text = _traces(capsys, tmp_path / "t", s.url)
        assert rc == 2 and "http 401" in text and "no key was sent ($OPENAI_API_KEY is not set)" in text
        rc, text = _traces(capsys, tmp_path / "u", s.url, **{"teacher.api.key_env": ""})
        assert rc == 2 and "no key was sent (teacher.api.key_env is empty)" in text


def test_h_curate_refuses_a_manifests_key_variable_that_is_not_set_unrepeated(monkeypatch):
    from retort.lm.config import API_IDENTITY, ApiConfig
    from retort.lm.curate.server import api_teacher

    key = PASTED_KEYS[0]  # a set made before key_env was checked may hold a key there
    monkeypatch.delenv(key, raising=False)
    ident = {k: getattr(ApiConfig(), k) for k in API_IDENTITY} | {"tokenizer": "preset:nano"}
    manifest = {"params": {"teacher": {"name": "openai:m", "api": ident}},
                "api_server": {"base_url": "http://127.0.0.1:1/v1", "key_env": key}}
    with pytest.raises(DataError, match="api_server.key_env.*not set here") as e:
        api_teacher("traces-dir", manifest, None)
    assert key not in str(e.value)


# ---------------------------------------------------------------- i: several URLs


def test_i_a_dead_url_among_two_is_skipped(tmp_path, capsys):
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    out = tmp_path / "t"
    with ApiServer() as s:
        rc, text = _traces(capsys, out, f"{dead},{s.url}")
    assert rc == 0, text
    assert len(s.answered()) == N_KEYS and len(_rows(out)) == N_KEYS
    m = read_manifest(out)["last_run"]
    assert m["errors"]["connection"] >= 1  # the first request went to the dead one (both idle)
    assert m["by_url"][dead] == m["errors"]["connection"] and m["by_url"][s.url] == N_KEYS


def test_i_a_server_that_dies_midway_leaves_the_rest_to_the_other(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer(die_after=6) as dying, ApiServer() as s:
        rc, text = _traces(capsys, out, f"{dying.url},{s.url}", **{"teacher.api.balance": "round_robin"})
    assert rc == 0, text
    assert len(dying.answered()) == 6 and len(s.answered()) == N_KEYS - 6
    assert len(_rows(out)) == N_KEYS
    assert read_manifest(out)["last_run"]["errors"]["connection"] >= 1


def test_i_round_robin_shares_the_requests(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer() as a, ApiServer() as b:
        rc, text = _traces(capsys, out, f"{a.url},{b.url}", **{"teacher.api.balance": "round_robin"})
    assert rc == 0, text
    na, nb = len(a.completions()), len(b.completions())
    assert na + nb == N_KEYS and abs(na - nb) <= 1
    assert read_manifest(out)["last_run"]["by_url"] == {a.url: na, b.url: nb}


# ---------------------------------------------------------------- j: reasoning


def test_j_reasoning_content_is_kept_apart_from_the_answer(tmp_path, capsys):
    out = tmp_path / "t"
    with ApiServer(reasoning=True) as s:
        assert _traces(capsys, out, s.url)[0] == 0
    sent = {e["rid"]: e for e in s.answered()}
    for k, r in zip(_row_keys(out), _rows(out)):
        e = sent[_rid(k)]
        assert r["reasoning"] == reasoning_text(r["prompt"], e["seed"])
        # the student learns the reasoning, then the answer (teacher.api.reasoning_template); the
        # answer alone is what is extracted and verified
        assert r["completion"] == (f"<think>\n{reasoning_text(r['prompt'], e['seed'])}\n</think>\n\n"
                                   f"{answer_text(r['prompt'], e['seed'])}")
        assert r["answer"] == get_task(load_config(TracesRun, None, []).task).extract_answer(answer_text(r["prompt"], e["seed"]))
    out2 = tmp_path / "t2"
    with ApiServer(reasoning=True) as s:
        assert _traces(capsys, out2, s.url, **{"teacher.api.reasoning_template": '"{answer}"'})[0] == 0
    assert [r["completion"] for r in _rows(out2)] == [r["completion"].split("</think>\n\n")[1] for r in _rows(out)]


# ---------------------------------------------------------------- k: the token map


@pytest.fixture
def char_tok_dir(tmp_path):
    """The built-in character tokenizer saved as a model directory (one token per character)."""
    from retort.lm.models.presets import char_tokenizer, preset_config

    tok = char_tokenizer()
    d = tmp_path / "tok"
    tok.save_pretrained(d)
    preset_config("nano", len(tok)).save_pretrained(d)
    return d, tok


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_k_token_map_gives_ids_logprobs_and_topk(tmp_path, capsys, char_tok_dir, endpoint):
    d, tok = char_tok_dir
    out = tmp_path / "t"
    with ApiServer(tokenizer=tok) as s:
        rc, text = _traces(capsys, out, s.url, **{"teacher.api.tokenizer": str(d), "sampling.topk": 3,
                                                   "teacher.api.endpoint": endpoint})
    assert rc == 0, text
    m = read_manifest(out)
    assert m["token_map"] == {"tokenizer": str(d), "check": "by the server's /tokenize and by bytes", "ids": True}
    assert m["tokenizer_sha256"] and m["vocab_size"] == len(tok)
    assert any(e["path"] == "/tokenize" for e in s.log)
    for r in _rows(out):
        ids = tok(r["completion"], add_special_tokens=False)["input_ids"]
        assert r["completion_ids"] == ids and r["n_tokens"] == len(ids) == 7
        assert r["completion_logprobs"] == pytest.approx([-0.1] * 7)
        top_ids, top_lp = topk_codec.decode(r["topk"])
        assert top_ids.shape == (7, 3)
        for pos, ch in enumerate(r["completion"]):
            alts = [ch] + [a for a in "0123456789abcdefghijklmnopqrstuvwxyz" if a != ch][:2]
            want = {tok.convert_tokens_to_ids(a): lp for a, lp in zip(alts, (-0.1, -3.0, -4.0))}
            got = dict(zip(top_ids[pos].tolist(), top_lp[pos].tolist()))
            assert set(got) == set(want)
            assert got[ids[pos]] == pytest.approx(-0.1, abs=0.07)


@pytest.mark.parametrize("tokenize", ["none", "wrong"])
def test_k_an_unchecked_or_wrong_token_map(tmp_path, capsys, char_tok_dir, tokenize):
    """No /tokenize: the map is checked by bytes and holds. /tokenize with other ids: no ids at all,
    and a trace store of that set is refused, saying why."""
    d, tok = char_tok_dir
    out = tmp_path / "t"
    server = ApiServer(tokenizer=None) if tokenize == "none" else ApiServer(tokenizer=tok, tokenize_offset=1)
    with server:
        rc, text = _traces(capsys, out, server.url, **{"teacher.api.tokenizer": str(d), "sampling.topk": 3})
    assert rc == 0, text
    tm = read_manifest(out)["token_map"]
    rows = _rows(out)
    if tokenize == "none":
        assert tm["ids"] is True and tm["check"].startswith("by bytes")
        assert all(r["completion_ids"] == tok(r["completion"], add_special_tokens=False)["input_ids"] for r in rows)
        TraceStoreTeacher(str(out))
        return
    assert tm["ids"] is False and tm["check"].startswith("MISMATCH")
    assert all(r["completion_ids"] == [] and r["topk"] is None for r in rows)
    assert all(len(r["completion_logprobs"]) == 7 and json.loads(r["api_tokens"])["t"] for r in rows)
    assert "token ids not mapped (MISMATCH" in " ".join(text.split())
    with pytest.raises(DataError, match="no checked token map \\(MISMATCH.*not token ids"):
        TraceStoreTeacher(str(out))


def test_k_a_trace_store_of_api_traces_scores_a_stopped_trace(tmp_path, capsys, char_tok_dir):
    """What the kd method asks of a stopped trace: its ids, then EOS (collate.py). A server lists no
    EOS step, so the scores cover the sampled tokens; the EOS step has no teacher log-prob."""
    import math

    from retort.lm.data.collate import encode_prompt

    d, tok = char_tok_dir
    out = tmp_path / "t"
    with ApiServer(tokenizer=tok) as s:
        assert _traces(capsys, out, s.url, **{"teacher.api.tokenizer": str(d), "sampling.topk": 3})[0] == 0
    teacher = TraceStoreTeacher(str(out))
    r = _rows(out)[0]
    assert r["finish_reason"] == "stop"
    p = encode_prompt(teacher.tokenizer, r["prompt"])
    c = r["completion_ids"] + [tok.eos_token_id]
    sc = teacher.score([p], [c], topk=3)[0]
    assert sc.logprobs[:-1] == pytest.approx(r["completion_logprobs"]) and math.isnan(sc.logprobs[-1])
    assert len(sc.topk_ids) == len(c) - 1 and all(ids[0] in row for ids, row in zip(zip(c), sc.topk_ids))
    with pytest.raises(DataError, match="no log-prob stored for the end-of-sequence step"):
        teacher.score([p], [c])
    with pytest.raises(DataError, match="did not sample"):  # a stopped trace without its EOS
        teacher.score([p], [r["completion_ids"]], topk=3)


# ---------------------------------------------------------------- ApiTeacher.generate / score


def _teacher(url, **api):
    from retort.lm.teachers.api import ApiTeacher

    over = ["teacher.name=openai:m", f"teacher.api.base_url={url}", "teacher.api.backoff_s=0.01",
            *[f"teacher.api.{k}={v}" for k, v in api.items()]]
    return ApiTeacher(load_config(TracesRun, None, over).teacher)


def test_generate_gives_num_samples_per_prompt_with_ids_and_the_servers_topk(char_tok_dir):
    d, tok = char_tok_dir
    prompts = ["Q:1+2*3\n", "Q:9-4+4\n"]
    with ApiServer(tokenizer=tok) as s:
        out = _teacher(s.url, tokenizer=str(d)).generate(prompts, max_new_tokens=8, temperature=0.7, num_samples=2,
                                                          seed=5, scores=2)
    assert len(s.completions()) == 4 and all(e["body"]["top_logprobs"] == 2 for e in s.completions())
    for i, p in enumerate(prompts):
        assert len(out[i]) == 2
        for j, c in enumerate(out[i]):
            text = answer_text(p, request_seed(5, i, j))
            assert c.text == text and c.finish_reason == "stop"
            assert c.token_ids == tok(text, add_special_tokens=False)["input_ids"]
            assert c.scores.logprobs == pytest.approx([-0.1] * 7)
            assert [r[0] for r in c.scores.topk_ids] == c.token_ids  # the chosen token ranks first
            assert all(len(r) == 2 for r in c.scores.topk_ids)


def test_generate_says_how_many_requests_failed():
    with ApiServer(fail_400_containing="Q:9") as s, \
            pytest.raises(ApiError, match="2 of 4 requests failed, e.g. http 400"):
        _teacher(s.url).generate(["Q:1+2\n", "Q:9-4\n"], num_samples=2, temperature=1.0)


def test_score_needs_a_checked_tokenizer_and_prompt_logprobs(char_tok_dir):
    d, tok = char_tok_dir
    with ApiServer(tokenizer=tok) as s:
        with pytest.raises(ApiError, match="scoring given tokens needs teacher.api.tokenizer"):
            _teacher(s.url).score([[5, 6]], [[7, 8]])
        assert not s.log
        with pytest.raises(ApiError, match="gave no prompt_logprobs.*sampling.topk.*teacher.name=traces:DIR"):
            _teacher(s.url, tokenizer=str(d)).score([[5, 6]], [[7, 8]], topk=2)
    with ApiServer(tokenizer=tok, tokenize_offset=1) as s:
        with pytest.raises(ApiError, match="the served tokenizer differs.*MISMATCH"):
            _teacher(s.url, tokenizer=str(d)).score([[5, 6]], [[7, 8]])
        assert not s.completions()


def test_the_fault_server_answers_its_other_routes():
    import httpx

    with ApiServer() as s:
        root = s.url[:-len("/v1")]
        assert httpx.get(root + "/health").json() == {"status": "ok"}
        assert httpx.get(s.url + "/models").json()["data"][0]["id"] == "m"
        assert httpx.post(root + "/tokenize", json={"prompt": "ab"}).status_code == 404  # no tokenizer given
        assert httpx.get(s.url + "/nothing").status_code == 404
    with pytest.raises(ValueError, match="unknown fault"):
        ApiServer(faults={"503": 1})


# ---------------------------------------------------------------- the journal itself


def test_journal_appends_lines_and_cuts_a_torn_last_one(tmp_path):
    from retort.lm.data.traces import Journal

    p = tmp_path / "journal-00000.jsonl"
    assert Journal.read(p) == []
    j = Journal(p)
    j.append({"k": "0/0", "s": "ok", "row": {"completion": "é\n"}})
    j.append({"k": "0/1", "s": "drop"})
    # written at once, before any sync or close: a process killed now has lost nothing
    assert [r["k"] for r in Journal.read(p)] == ["0/0", "0/1"]
    j.close()
    j.close()
    whole = p.read_bytes()
    with open(p, "ab") as fh:
        fh.write(b'{"k": "0/2", "s"')
    assert Journal.read(p) == [{"k": "0/0", "s": "ok", "row": {"completion": "é\n"}}, {"k": "0/1", "s": "drop"}]
    assert p.read_bytes() == whole  # cut, so the next append starts a line of its own
    j = Journal(p)
    j.append({"k": "0/2", "s": "ok"})
    j.close()
    assert [r["k"] for r in Journal.read(p)] == ["0/0", "0/1", "0/2"]


def test_journal_with_a_changed_line_is_refused_naming_it(tmp_path):
    from retort.lm.data.traces import Journal

    p = tmp_path / "journal-00003.jsonl"
    p.write_bytes(b'{"k": "0/0"}\nnot json\n{"k": "0/1"}\n')
    with pytest.raises(DataError, match="journal-00003.jsonl:2: not a JSON line"):
        Journal.read(p)
    assert p.read_bytes() == b'{"k": "0/0"}\nnot json\n{"k": "0/1"}\n'


# ---------------------------------------------------------------- l: buckets and backoff, by a clock


class Clock:
    """time.monotonic and asyncio.sleep for `http`: sleeping moves the clock, nothing waits."""

    def __init__(self):
        self.t, self.sleeps = 1000.0, []

    def monotonic(self):
        return self.t

    async def sleep(self, s):
        self.sleeps.append(s)
        self.t += s


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(http, "time", SimpleNamespace(monotonic=c.monotonic))
    monkeypatch.setattr(http, "asyncio", SimpleNamespace(sleep=c.sleep, Semaphore=None))
    return c


def _now(coro):
    """Run a coroutine that never really suspends (the clock's sleep returns at once)."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    raise AssertionError("suspended on something other than the clock")


def test_l_bucket_starts_full_then_refills_at_its_rate(clock):
    b = http.Bucket(60)  # 1 a second, ten seconds' worth
    _now(b.take(10))
    assert clock.sleeps == []
    _now(b.take(1))
    assert clock.sleeps == [1.0]
    clock.t += 3.5
    _now(b.take(2))
    assert clock.sleeps == [1.0] and b.level == pytest.approx(1.5)
    clock.t += 1000  # idle: never more than ten seconds' worth
    _now(b.take(10))
    _now(b.take(2))
    assert clock.sleeps == [1.0, 2.0]


def test_l_bucket_lets_an_outsized_request_pass_once_full(clock):
    b = http.Bucket(60)
    _now(b.take(10))
    _now(b.take(25))  # more than the bucket holds: waits until 25 have accrued, 5 s at a time
    assert clock.sleeps == [5.0] * 5 and b.level == pytest.approx(0.0)


def test_l_bucket_settles_estimates(clock):
    b = http.Bucket(60)
    _now(b.take(10))
    b.give(4)           # the answer used 4 fewer than estimated
    _now(b.take(4))
    assert clock.sleeps == []
    b.give(-3)          # 3 more than estimated: a debt paid before the next request
    _now(b.take(1))
    assert clock.sleeps == [4.0]
    b.give(100)
    assert b.level == b.capacity == 10


def test_l_delay_honours_retry_after_and_backs_off_with_jitter():
    p = http.Pool(["http://x/v1"], backoff_s=1.0, seed=3)
    assert p._delay(0, "0") == 0.0
    assert p._delay(5, "2.5") == 2.5
    assert p._delay(0, "-4") == 0.0
    assert p._delay(0, "86400") == http.BACKOFF_CAP_S
    for attempt in range(12):
        base = min(http.BACKOFF_CAP_S, 2.0 ** attempt)
        for ra in (None, "", "Wed, 21 Oct 2015 07:28:00 GMT"):  # an HTTP date is not understood: backoff
            d = p._delay(attempt, ra)
            assert base / 2 <= d <= base
    same = [http.Pool(["http://x/v1"], seed=7)._delay(2, None) for _ in range(2)]
    other = http.Pool(["http://x/v1"], seed=8)._delay(2, None)
    assert same[0] == same[1] != other  # the jitter is seeded


def test_l_pick_skips_a_url_cooling_down_until_it_ends(clock):
    a, b = "http://a/v1", "http://b/v1"
    p = http.Pool([a, b])
    assert p._pick() == a  # least loaded: both idle, the first
    p.open[a] = 2
    assert p._pick() == b
    p.open[a] = 0
    p.down_until[a] = clock.t + 5
    assert p._pick() == b
    clock.t += 5
    assert p._pick() == a
    p.down_until = {a: clock.t + 1, b: clock.t + 1}
    assert p._pick() in (a, b)  # all down: all are tried
    rr = http.Pool([a, b], balance="round_robin")
    assert [rr._pick() for _ in range(4)] == [b, a, b, a]


def test_l_summary_names_kinds_most_frequent_first():
    from collections import Counter

    assert http.summary(Counter({"timeout": 1, "http 429": 3})) == "3 x http 429, 1 x timeout"
    assert http.summary(Counter()) == "none"


# ---------------------------------------------------------------- m: malformed config


@pytest.mark.parametrize("override, words", [
    ("teacher.api.base_url=ftp://x", ["teacher.api.base_url", "'ftp://x' is not an http:// or https:// URL"]),
    ("teacher.api.base_url=http://127.0.0.1:1/v1,ftp://y", ["teacher.api.base_url", "ftp://y"]),
    ("teacher.api.endpoint=bogus", ["teacher.api.endpoint", "chat", "completions"]),
    ("teacher.api.balance=random", ["teacher.api.balance", "round_robin"]),
    ("teacher.api.max_in_flight=0", ["teacher.api.max_in_flight"]),
    ("teacher.api.on_length=cut", ["teacher.api.on_length", "retry"]),
])
def test_m_a_malformed_api_setting_is_one_clear_error_and_writes_nothing(tmp_path, capsys, override, words):
    out = tmp_path / "t"
    key, value = override.split("=", 1)
    with ApiServer() as s:
        rc, text = _traces(capsys, out, s.url, **{key: value})
    assert rc == 2
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    for w in words:
        assert w in lines[0]
    assert not out.exists() and not s.log


def test_a_bad_batch_file_or_batch_out_path_writes_nothing(tmp_path, capsys):
    out = tmp_path / "t"
    bad = tmp_path / "results.jsonl"
    bad.write_text('{"custom_id": "retort:0/0:0", "response": {"status_code": 200, "body": {"choices": []}}}\n')
    for extra, says in ((["--batch-in", str(tmp_path / "none.jsonl")], "no such file"),
                        (["--batch-in", str(bad)], ("results.jsonl:1: the response body is not a chat answer "
                                                   "(IndexError: list index out of range; body: {\"choices\": []})")),
                        (["--batch-out", str(tmp_path)], "is a directory")):
        rc = main(["traces", *extra, *[f"{k}={v}" for k, v in {**BASE, "out": str(out)}.items()]])
        err = capsys.readouterr().err
        assert rc == 2 and says in " ".join(err.split()) and not out.exists(), err


def test_an_api_teachers_traces_load_neither_torch_nor_transformers(tmp_path):
    """`retort traces` with an API teacher (no tokenizer) is requests and Parquet: a process that
    imports torch (~2 s) or transformers (~1.4 s) only to start is a regression."""
    with ApiServer() as s:
        args = [f"{k}={v}" for k, v in {**BASE, "out": str(tmp_path / "t"), "teacher.api.base_url": s.url}.items()]
        code = ("import sys; from retort.cli import main; rc = main(sys.argv[1:]); "
                "print('LOADED', sorted(m for m in ('torch', 'transformers') if m in sys.modules)); sys.exit(rc)")
        proc = subprocess.run([sys.executable, "-c", code, "traces", *args], capture_output=True, text=True,
                              timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LOADED []" in proc.stdout, proc.stdout

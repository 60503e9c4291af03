"""The API teacher against a real OpenAI-compatible server: `transformers serve` (pip install
'transformers[serving]') serving a model saved by retort, checked against the same model loaded here.

`transformers serve` returns text and usage but no log-probs, so this file checks the text path
(completions and chat endpoints, traces, training on them); the log-prob path against a real server
is tests/test_slow_api_llamacpp.py (llama.cpp's server, slow tier)."""

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from apiserver import wait_until_up

from retort.config import load_config

from retort.lm.config import ModelConfig, TracesRun
from retort.errors import DataError
from retort.lm.data.collate import encode_prompt
from retort.lm.data.traces import read_manifest, read_traces
from retort.lm.models import load_model, load_tokenizer
from retort.lm.rollout.generate import generate
from retort.lm.tasks import get_task
from retort.lm.traces import run_traces

CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}")

pytestmark = pytest.mark.skipif(shutil.which("transformers") is None or
                                __import__("importlib").util.find_spec("fastapi") is None,
                                reason="transformers serve needs transformers[serving] (fastapi, uvicorn)")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A model saved by retort (the nano preset with weights drawn wide, so greedy text depends on
    the prompt), with a chat template, served by `transformers serve` on a free port."""
    d = tmp_path_factory.mktemp("served") / "model"
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5, generator=g)
    tok.chat_template = CHAT
    model.save_pretrained(d)
    tok.save_pretrained(d)
    port = _port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = open(d.parent / "server.log", "w")
    proc = subprocess.Popen(["transformers", "serve", str(d), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu", "--dtype", "float32"], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    if not wait_until_up(f"http://127.0.0.1:{port}/health", proc):
        proc.kill()
        pytest.fail(f"transformers serve did not start: {(d.parent / 'server.log').read_text()[-2000:]}")
    yield {"dir": d, "url": f"http://127.0.0.1:{port}/v1", "model": model.eval(), "tok": tok}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _args(out, served, **extra):
    args = {"out": str(out), "teacher.name": f"openai:{served['dir']}", "teacher.api.base_url": served["url"],
            "teacher.api.tokenizer": str(served["dir"]), "n_prompts": 10, "shard_prompts": 4, "sampling.n": 1,
            "sampling.temperature": 0, "sampling.max_new_tokens": 12, "teacher.api.max_in_flight": 4}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_traces_from_the_server_equal_the_model_run_here(tmp_path, served, endpoint):
    out = tmp_path / "traces"
    run_traces(load_config(TracesRun, None, _args(out, served, **{"teacher.api.endpoint": endpoint})))
    rows = read_traces(out).to_pylist()
    task = get_task(load_config(TracesRun, None, []).task)
    prompts = [e.prompt for e in task.examples("train", 10, 0)]
    assert [r["prompt"] for r in rows] == prompts
    tok = load_tokenizer(ModelConfig(name=str(served["dir"])))
    if endpoint == "completions":
        tok.chat_template = None  # the raw prompt, as sent
    # the same greedy continuation here, from the same weights and the same prompt tokens
    local = generate(served["model"], tok, prompts, max_new_tokens=12, temperature=0)
    assert [r["completion"] for r in rows] == [o[0].text for o in local]
    assert any(r["completion"] != rows[0]["completion"] for r in rows)  # prompt-dependent: not a constant
    assert [r["completion_ids"] for r in rows] == [tok(o[0].text, add_special_tokens=False)["input_ids"]
                                                    for o in local]
    m = read_manifest(out)
    # the ledger is the server's own count: the prompt tokens are what the template made of each prompt
    assert m["ledger"]["prompt_tokens"] == sum(len(encode_prompt(tok, p)) for p in prompts)
    assert m["ledger"]["completion_tokens"] == sum(len(o[0].token_ids) for o in local)
    assert m["ledger"]["responses"] == 10 and m["last_run"]["requests"] == 10
    assert m["token_map"]["ids"] and m["params"]["teacher"]["api"]["endpoint"] == endpoint
    assert "base_url" not in m["params"]["teacher"]["api"]  # a moved server still resumes the set


def test_a_student_trains_on_the_servers_traces_and_a_rerun_sends_nothing(tmp_path, served):
    from conftest import tiny_overrides

    from retort.lm.config import TrainRun
    from retort.train import train

    out = tmp_path / "traces"
    cmd = _args(out, served, **{"teacher.api.endpoint": "completions", "sampling.temperature": 1.0,
                                "sampling.n": 2})
    run_traces(load_config(TracesRun, None, cmd))
    before = read_manifest(out)
    run_traces(load_config(TracesRun, None, cmd))  # finished: nothing is requested again
    after = read_manifest(out)
    assert after["last_run"]["requests"] == 0 and after["ledger"] == before["ledger"]
    assert len(read_traces(out)) == 20
    run = tmp_path / "run"
    train(load_config(TrainRun, None, tiny_overrides(run, steps=3, **{
        "data.source": "traces", "data.traces": str(out), "data.trace_filter": "all"})))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in x for x in lines) and (run / "model").is_dir()


def test_the_key_is_sent_from_the_environment_and_written_nowhere(tmp_path, served, monkeypatch, capsys):
    secret = "sk-retort-test-0c7f3e9a"
    monkeypatch.setenv("RETORT_TEST_KEY", secret)
    out = tmp_path / "traces"
    run_traces(load_config(TracesRun, None, _args(out, served, **{"teacher.api.key_env": "RETORT_TEST_KEY",
                                                                  "teacher.api.endpoint": "completions"})))
    for f in Path(out).rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    assert secret not in capsys.readouterr().out


def _run_batch(served, src: Path, dst: Path, skip: int = 0) -> None:
    """What `vllm run-batch` or a provider's batch API does with a batch file, against the real
    server: each line's body POSTed to its url, answers written in the OpenAI batch output format."""
    import httpx

    root = served["url"].rsplit("/v1", 1)[0]
    out = []
    for i, line in enumerate(src.read_text().splitlines()):
        if i < skip:
            continue
        req = json.loads(line)
        r = httpx.post(root + req["url"], json=req["body"], timeout=60)
        out.append(json.dumps({"id": f"batch_req_{i}", "custom_id": req["custom_id"],
                               "response": {"status_code": r.status_code, "request_id": f"r{i}", "body": r.json()},
                               "error": None}))
    dst.write_text("\n".join(out) + "\n")


def test_a_batch_file_round_trip_gives_the_same_traces_as_live_requests(tmp_path, served):
    live, batch = tmp_path / "live", tmp_path / "batch"
    over = {"teacher.api.endpoint": "completions"}
    run_traces(load_config(TracesRun, None, _args(live, served, **over)))
    cfg = load_config(TracesRun, None, _args(batch, served, **over))
    run_traces(cfg, batch_out=tmp_path / "requests.jsonl")
    reqs = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert len(reqs) == 10 and {r["url"] for r in reqs} == {"/v1/completions"}
    assert len({r["custom_id"] for r in reqs}) == 10
    assert not read_manifest(batch)["complete"]
    # half the results come back first; the second batch file asks only for the rest
    _run_batch(served, tmp_path / "requests.jsonl", tmp_path / "results1.jsonl", skip=5)
    run_traces(cfg, batch_in=tmp_path / "results1.jsonl")
    run_traces(cfg, batch_out=tmp_path / "requests2.jsonl")
    assert len((tmp_path / "requests2.jsonl").read_text().splitlines()) == 5
    _run_batch(served, tmp_path / "requests2.jsonl", tmp_path / "results2.jsonl")
    run_traces(cfg, batch_in=tmp_path / "results2.jsonl")
    run_traces(cfg, batch_in=tmp_path / "results1.jsonl")  # read twice: nothing is added twice
    a, b = read_traces(live).to_pylist(), read_traces(batch).to_pylist()
    assert [r["completion"] for r in a] == [r["completion"] for r in b]
    assert [r["completion_ids"] for r in a] == [r["completion_ids"] for r in b]
    assert read_manifest(batch)["ledger"] == read_manifest(live)["ledger"]


def test_mixed_policy_continues_student_prefixes_through_the_server(tmp_path, served):
    """`curate --mixed-policy` on an API trace set: the server continues the rendered prompt plus
    the student's prefix as text (completions endpoint), as the model here continues the same ids."""
    from retort.lm.data.collate import render_prompt as _render
    from retort.lm.teachers import ApiTeacher

    out = tmp_path / "api"
    run_traces(load_config(TracesRun, None, _args(out, served, **{"teacher.api.endpoint": "chat"})))
    cfg = load_config(TracesRun, None, _args(out, served)).teacher
    teacher = ApiTeacher(cfg)
    tok = teacher.tokenizer
    prompts = [r["prompt"] for r in read_traces(out).to_pylist()][:4]
    texts = [_render(tok, p) + "1+2" for p in prompts]
    got = teacher.generate(texts, max_new_tokens=10, temperature=0, endpoint="completions")
    ids = [encode_prompt(tok, p) + tok("1+2", add_special_tokens=False)["input_ids"] for p in prompts]
    from retort.lm.rollout.generate import generate_ids

    here = generate_ids(served["model"], tok, ids, max_new_tokens=10, temperature=0)
    assert [g[0].text for g in got] == [h[0].text for h in here]
    # the command builds this teacher from the trace set's manifest: where the server was, the
    # identity keys of teacher.api; a set sampled without the tokenizer is refused
    from retort.lm.curate.server import api_teacher as _api_teacher

    rebuilt = _api_teacher(out, read_manifest(out), None)
    assert rebuilt.urls == [served["url"]] and rebuilt.model_id == teacher.model_id
    assert _api_teacher(out, read_manifest(out), "http://elsewhere:1/v1").urls == ["http://elsewhere:1/v1"]
    bare = read_manifest(out)
    bare["params"]["teacher"]["api"]["tokenizer"] = None
    with pytest.raises(DataError, match="needs that tokenizer"):
        _api_teacher(out, bare, None)


def test_rewrite_and_retro_search_through_the_server(tmp_path, served):
    """`curate --rewrite` and `--retro-search` on an API trace set: the traces' server rewrites
    (its configured endpoint) and continues (completions, drawn again when the first step switches);
    rows keep text and ids, and no log-probs (a server scores no given text here)."""
    import pyarrow as pa

    from retort.cli import main
    from retort.lm.curate import shorten, trace_stats
    from retort.lm.data.traces import SCHEMA, TraceWriter

    real = tmp_path / "api"
    run_traces(load_config(TracesRun, None, _args(real, served)))
    m = read_manifest(real)
    # the same teacher and server, with traces the task verifies (a random model's are wrong)
    src = tmp_path / "src"
    w = TraceWriter(src, m["params"], {k: m.get(k) for k in ("task", "teacher", "tokenizer_sha256")}, {0: 3})
    w.manifest["api_server"] = m["api_server"]
    trace = "7+5=2\n2*3=6 Wait, 2*3=6\n6-4=2\nA:2"
    rows = [{"prompt_id": f"p{i}", "sample_idx": 0, "prompt": f"Q:7+5*3-{i}\n", "completion": trace,
             "completion_ids": [], "completion_logprobs": [], "topk": None, "answer": "2", "reference": "2",
             "correct": True, "finish_reason": "stop", "n_tokens": 20, "difficulty": 3} for i in range(3)]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    w.write_shard(0, table)
    w.finish(trace_stats(table))
    stats = shorten.retro_search(str(src), str(tmp_path / "rs"), keywords=("Wait",), tries=2)
    c = stats["retro_counts"]
    assert (c["traces"], c["switches"], c["rollouts"]) == (3, 3, 6)
    assert c["no_untaken_path"] + c["wrong"] + c["not_shorter"] + c["revisions"] == 3
    out = read_traces(tmp_path / "rs").to_pylist()
    tok = load_tokenizer(ModelConfig(name=str(served["dir"])))
    assert all(r["completion_logprobs"] == [] and r["completion_ids"] == tok(r["completion"],
               add_special_tokens=False)["input_ids"] for r in out)
    tpl = tmp_path / "t.txt"
    tpl.write_text("R {easy} {medium} {hard}\n{question}{trace}\n")
    assert main(["curate", str(src), "--out", str(tmp_path / "dap"), "--rewrite", "dap", "--rewrite-template",
                 str(tpl)]) == 0
    c = read_manifest(tmp_path / "dap")["rewrite_counts"]
    assert c["traces"] == 3 and c["kept"] + sum(c["rejected"].values()) == 3
    # the server elsewhere: --teacher-url
    assert main(["curate", str(src), "--out", str(tmp_path / "x"), "--retro-search", "--teacher-url",
                 "http://127.0.0.1:1/v1", "--retro-tries", "1"]) == 2

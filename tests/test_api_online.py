"""The API teacher online: `score` of given continuations from vLLM's `prompt_logprobs`, so `kd`,
`gkd` and `rkl_pg` can use `teacher.name=openai:MODEL` directly (the student's own samples graded
by the server).

No server that installs here returns `prompt_logprobs` (vLLM does, on a GPU build; llama.cpp's and
transformers' servers do not: tests/test_slow_api_llamacpp.py checks the refusal against the real
llama.cpp server). So the loopback server of tests/apiserver.py answers in vLLM's format with the
log-probs of a model this test holds: what is checked is retort's side — the request (token ids
as the prompt), the parsing, the mapping to positions, and the methods' use of them — against the
same model scoring here."""

import json
from pathlib import Path

import pytest
import torch
from apiserver import ApiServer
from conftest import tiny_overrides

from retort.config import load_config

from retort.lm.config import ModelConfig, TracesRun, TrainRun
from retort.lm.models import load_model
from retort.lm.teachers import ApiTeacher, LocalTeacher
from retort.train import train


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("online") / "teacher"
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=3)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def vllm_prompt_logprobs(model):
    """(ids, k) -> vLLM's prompt_logprobs: None for the first token, then at each position the
    given token and the top-k, {str(id): {logprob, rank, decoded_token}}."""
    @torch.no_grad()
    def fn(ids, k):
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        out = [None]
        for pos in range(1, len(ids)):
            row = lp[pos - 1]
            order = row.argsort(descending=True)
            rank = {int(t): r + 1 for r, t in enumerate(order[:max(k, 1)].tolist())}
            entry = {str(ids[pos]): {"logprob": float(row[ids[pos]]), "rank": rank.get(ids[pos], 99),
                                     "decoded_token": "?"}}
            for t in order[:k].tolist():
                entry[str(t)] = {"logprob": float(row[t]), "rank": rank[t], "decoded_token": "?"}
            out.append(entry)
        return out
    return fn


def test_score_from_prompt_logprobs_equals_the_model_here(teacher_dir):
    model, tok = load_model(ModelConfig(name=str(teacher_dir)))
    local = LocalTeacher(str(teacher_dir), model.eval(), tok)
    with ApiServer(tokenizer=tok, prompt_logprobs=vllm_prompt_logprobs(model)) as s:
        cfg = load_config(TracesRun, None, ["teacher.name=openai:m", f"teacher.api.base_url={s.url}",
                                            f"teacher.api.tokenizer={teacher_dir}"]).teacher
        api = ApiTeacher(cfg)
        prompts = [[1, 20, 21, 22], [1, 30]]
        comps = [[40, 41, 42, 43], [44, 45]]
        got, want = api.score(prompts, comps, topk=4), local.score(prompts, comps, topk=4)
        sent = [e["body"] for e in s.completions()]
    assert [b["prompt"] for b in sent] == [p + c for p, c in zip(prompts, comps)]
    assert all(b["prompt_logprobs"] == 4 and b["max_tokens"] == 1 for b in sent)
    for g, w in zip(got, want):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)
        assert g.topk_ids == w.topk_ids
        for a, b in zip(g.topk_logprobs, w.topk_logprobs):
            assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("method", ["kd", "gkd", "rkl_pg"])
def test_methods_train_with_the_api_teacher_online(tmp_path, teacher_dir, method):
    model, tok = load_model(ModelConfig(name=str(teacher_dir)))
    with ApiServer(tokenizer=tok, prompt_logprobs=vllm_prompt_logprobs(model.eval())) as s:
        run = tmp_path / method
        train(load_config(TrainRun, None, tiny_overrides(run, steps=2, **{
            "method": method, "teacher.name": "openai:m", "teacher.api.base_url": s.url,
            "teacher.api.tokenizer": str(teacher_dir), "student.name": "preset:nano", "train.batch_size": 4,
            "method_args.max_new_tokens": 8} if method != "kd" else {
            "method": method, "teacher.name": "openai:m", "teacher.api.base_url": s.url,
            "teacher.api.tokenizer": str(teacher_dir), "student.name": "preset:nano", "train.batch_size": 4})))
        scored = [e for e in s.completions() if "prompt_logprobs" in e["body"]]
    lines = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert lines and all(x["loss"] == x["loss"] for x in lines)  # finite, not NaN
    # every training sequence of both steps was graded by the server (micro-batch 4, 2 steps)
    assert len(scored) >= 8

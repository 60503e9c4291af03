"""Teachers behind one interface (retort.lm.teachers): capabilities checked before step 0, the trace
store scores what it sampled, and kd takes the sparse top-k path from a teacher without hidden states."""

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from retort.cli import main
from retort.config import load_config
from retort.lm.config import ModelConfig, TracesRun, TrainRun
from retort.lm.data.collate import encode_prompt
from retort.lm.data.traces import read_traces
from retort.errors import ConfigError, DataError
from retort.lm.models import load_model, save_model
from retort.lm.teachers import LocalTeacher, TraceStoreTeacher, capabilities_of, check_capabilities, open_teacher
from retort.lm.traces import run_traces
from retort.train import train


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=123)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # peaked, so some samples stop
    save_model(model, tok, root / "t")
    run_traces(load_config(TracesRun, None, [f"out={root / 'tr'}", f"teacher.name={root / 't'}", "n_prompts=16",
                                             "shard_prompts=8", "sampling.n=2", "sampling.max_new_tokens=10",
                                             "sampling.topk=8"]))
    return root


def test_capabilities_are_known_without_loading(traces):
    assert capabilities_of("preset:nano") >= {"generate", "score", "hidden"}
    assert capabilities_of(f"traces:{traces / 'tr'}") == {"score_stored"}
    assert capabilities_of("openai:gpt-x") == {"generate", "score"}
    with pytest.raises(ConfigError, match=r"method tsd_kd needs a teacher that can hidden; teacher.name=openai:m can "
                                          r"generate, score \(teachers that can hidden: local model\)"):
        check_capabilities("tsd_kd", ({"hidden"},), "openai:m")
    with pytest.raises(ConfigError, match=r"method tsd_kd needs a teacher that can hidden; teacher.name=traces:x can "
                                          r"score_stored \(teachers that can hidden: local model\)"):
        check_capabilities("tsd_kd", ({"hidden"},), "traces:x")


def test_trace_store_scores_what_the_local_teacher_scores(traces):
    store = TraceStoreTeacher(str(traces / "tr"))
    local = open_teacher(ModelConfig(name=str(traces / "t")))
    assert isinstance(local, LocalTeacher)
    cols = read_traces(traces / "tr").to_pydict()
    eos = local.tokenizer.eos_token_id
    prompts = [encode_prompt(local.tokenizer, p) for p in cols["prompt"]]
    comps = [list(c) + ([eos] if f == "stop" else []) for c, f in zip(cols["completion_ids"], cols["finish_reason"])]
    assert any(f == "stop" for f in cols["finish_reason"])
    a, b = store.score(prompts, comps, topk=8), local.score(prompts, comps, topk=8)
    for x, y, sampled in zip(a, b, cols["completion_ids"]):
        n = len(sampled)  # sampled tokens: stored exactly; a stopped row's EOS step comes from the blob
        assert x.logprobs[:n] == pytest.approx(y.logprobs[:n], abs=1e-4)
        if len(x.logprobs) > n and x.logprobs[n] == x.logprobs[n]:  # NaN: EOS outside the stored top-k
            assert x.logprobs[n] == pytest.approx(y.logprobs[n], abs=1 / 32)  # 1/16-nat codes
        assert [sorted(r) for r in x.topk_ids] == [sorted(r) for r in y.topk_ids]
    with pytest.raises(DataError, match="a continuation this trace store did not sample"):
        store.score(prompts[:1], [[5, 6, 7]])
    with pytest.raises(DataError, match="the traces hold the top-8; top-16 asked"):
        store.score(prompts[:1], comps[:1], topk=16)


def _kd(tmp_path, name, **extra):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / name, steps=3, **{
        "method": "kd", "seed": 1, "train.batch_size": 8, "data.source": "traces",
        "data.traces": str(tmp_path / "tr"), "data.trace_filter": "all", "data.n_train": 32, **extra}))
    train(run)
    return [json.loads(line) for line in (Path(run.out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_kd_with_a_teacher_without_hidden_states_takes_the_sparse_path(traces):
    """teacher.name=traces:DIR has no hidden states: kd learns from its scores' top-k, which is
    exactly what the offline path reads from the same traces."""
    offline = _kd(traces, "offline", **{"method_args.teacher": "offline"})
    store = _kd(traces, "store", **{"teacher.name": f"traces:{traces / 'tr'}"})  # topk 20 > the 8 stored: 8
    assert [r["loss"] for r in store] == pytest.approx([r["loss"] for r in offline], rel=1e-6)


def test_a_teacher_without_the_capability_stops_before_step_0(traces, capsys):
    out = traces / "refused"
    rc = main(["train", *tiny_overrides(out, steps=1, **{"method": "tsd_kd", "teacher.name": f"traces:{traces / 'tr'}"})])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "method tsd_kd needs a teacher that can hidden" in err and not out.exists()
    rc = main(["train", *tiny_overrides(out, steps=1, **{"method": "rkl_pg", "teacher.name": f"traces:{traces / 'tr'}"})])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "needs a teacher that can hidden or score" in err and not out.exists()
    rc = main(["traces", f"out={out}", f"teacher.name=traces:{traces / 'tr'}"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "method traces needs a teacher that can generate;" in err and not out.exists()
    assert "(teachers that can generate: local model, openai:)" in err

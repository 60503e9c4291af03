import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from retort.lm.data.topk import decode
from retort.config import load_config
from retort.lm.config import ModelConfig, TracesRun, TrainRun
from retort.lm.curate import filter_traces, trace_stats
from retort.lm.data.collate import encode_prompt
from retort.lm.data.traces import MANIFEST, read_manifest, read_traces
from retort.errors import DataError
from retort.lm.models import load_model
from retort.lm.rollout.score import score
from retort.lm.traces import run_traces
from retort.train import train

CLI = [sys.executable, "-m", "retort.cli"]


def traces_args(out, **extra):
    args = {"out": str(out), "teacher.name": "preset:nano", "n_prompts": 12, "shard_prompts": 4,
            "batch_size": 8, "sampling.n": 2, "sampling.max_new_tokens": 10, "sampling.topk": 3}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def test_score_matches_a_direct_forward_pass():
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=2)
    p = [[1, 50, 60], [1, 70]]
    c = [[40, 41, 42], [43]]
    got = score(model, p, c, topk=2, batch_size=2)
    for pi, ci, g in zip(p, c, got):
        logits = model(torch.tensor([pi + ci])).logits[0].double()
        lp = torch.log_softmax(logits, -1)
        want = [lp[len(pi) - 1 + t, tok_id].item() for t, tok_id in enumerate(ci)]
        assert g.logprobs == pytest.approx(want, abs=1e-5)
        top = lp[len(pi) - 1:len(pi) - 1 + len(ci)].topk(2, -1)
        assert g.topk_ids == top.indices.tolist()
        assert torch.allclose(torch.tensor(g.topk_logprobs, dtype=torch.float64), top.values, atol=1e-5)
        # the tail is the log of the mass outside the top-k
        want_tail = torch.log1p(-top.values.exp().sum(-1))
        assert torch.allclose(torch.tensor(g.topk_tail, dtype=torch.float64), want_tail, atol=1e-5)


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_traces_rows_manifest_and_resume(tmp_path, engine):
    """fast: scores kept while sampling; hf (a stop string sends sampling to `generate`): scored by
    a teacher-forced pass afterwards. The rows must look the same either way."""
    out = tmp_path / "tr"
    extra = {"sampling.stop": '["@@"]'} if engine == "hf" else {}
    run_traces(load_config(TracesRun, None, traces_args(out, **extra)))
    table = read_traces(out)
    assert table.num_rows == 24
    keys = set(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist()))
    assert len(keys) == 24
    rows = table.to_pylist()
    for r in rows:
        assert len(r["completion_ids"]) == len(r["completion_logprobs"]) == r["n_tokens"]
        # one top-k row per token, plus the end-of-sequence step when the completion stopped
        ids, lps = decode(r["topk"])
        assert ids.shape == (r["n_tokens"] + (r["finish_reason"] == "stop"), 3)
        # the sampled token's log-prob never exceeds the best of the top-k (1/32 nat quantisation)
        assert all(lp <= top.max() + 0.04 for lp, top in zip(r["completion_logprobs"], lps))
    # stored log-probs are the teacher's: rescore one row directly
    model, tok = load_model(ModelConfig(name="preset:nano"))
    r = next(r for r in rows if r["n_tokens"] > 2)
    again = score(model, [encode_prompt(tok, r["prompt"])], [r["completion_ids"]])[0]
    assert again.logprobs == pytest.approx(r["completion_logprobs"], abs=1e-4)
    manifest = read_manifest(out)
    assert manifest["complete"] and len(manifest["shards"]) == 3
    assert manifest["params"]["teacher_weights_sha256"] and manifest["stats"]["rows"] == 24
    assert manifest["stats"]["bytes_per_token"] > 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    run_traces(load_config(TracesRun, None, traces_args(out, **extra)))  # finished: nothing is redone
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    with pytest.raises(DataError, match=r"other arguments \(differ at sampling.temperature\)"):
        run_traces(load_config(TracesRun, None, traces_args(out, **extra, **{"sampling.temperature": 0.5})))


def test_unrecorded_whole_shard_is_adopted_and_corruption_detected(tmp_path):
    out = tmp_path / "tr"
    run_traces(load_config(TracesRun, None, traces_args(out)))
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["shards"]["1"]  # as if killed between rename and manifest update
    manifest["complete"] = False
    (out / MANIFEST).write_text(json.dumps(manifest))
    run_traces(load_config(TracesRun, None, traces_args(out)))
    assert read_traces(out).num_rows == 24
    shard = out / "part-00002.parquet"
    pq.write_table(pq.read_table(shard).slice(0, 2), shard)
    with pytest.raises(DataError, match="checksum does not match"):
        read_traces(out)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(Path(__file__).parent.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_sigkill_any_number_of_times_loses_and_repeats_nothing(tmp_path):
    out = tmp_path / "tr"
    args = CLI + ["traces", *traces_args(out, n_prompts=60, shard_prompts=3, **{"sampling.topk": 0})]
    rng = random.Random(0)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait until the run is writing, then kill at a random moment
        deadline = time.time() + 120
        while not list(out.glob("part-*")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2
    subprocess.run(args, env=_env(), check=True, capture_output=True)
    table = read_traces(out)
    keys = list(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist()))
    assert len(keys) == 120 and len(set(keys)) == 120
    assert not list(out.glob("*.tmp"))


def _table(rows):
    base = {"prompt": "p", "completion": "c", "completion_ids": [1], "completion_logprobs": [-0.1],
            "topk": None, "answer": "1", "reference": "1", "finish_reason": "stop",
            "difficulty": 1}
    from retort.lm.data.traces import SCHEMA

    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=SCHEMA)


def test_trace_stats_on_known_rows():
    t = _table([
        {"prompt_id": "a", "sample_idx": 0, "correct": True, "n_tokens": 2, "completion_logprobs": [-1.0, -1.0]},
        {"prompt_id": "a", "sample_idx": 1, "correct": False, "n_tokens": 1, "completion_logprobs": [-2.0]},
        {"prompt_id": "b", "sample_idx": 0, "correct": False, "n_tokens": 1, "completion_logprobs": [-3.0]},
        {"prompt_id": "b", "sample_idx": 1, "correct": False, "n_tokens": 4,
         "completion_logprobs": [0.0, 0.0, 0.0, -2.0]},
    ])
    s = trace_stats(t)
    assert s["accuracy"] == 0.25 and s["pass@1"] == 0.25 and s["pass@2"] == 0.5
    assert s["prompts_with_no_correct"] == 1 and s["tokens"]["max"] == 4 and s["tokens"]["total"] == 8
    import math

    assert s["teacher_ppl"] == pytest.approx(math.exp(9 / 8))
    assert s["teacher_ppl_correct"] == pytest.approx(math.e)
    assert s["accuracy_by_difficulty"] == {"1": {"rows": 4, "accuracy": 0.25}}


def test_trace_stats_accuracy_by_difficulty():
    t = _table([{"prompt_id": "a", "sample_idx": 0, "correct": True, "n_tokens": 1, "difficulty": 3},
                {"prompt_id": "b", "sample_idx": 0, "correct": True, "n_tokens": 1, "difficulty": 2},
                {"prompt_id": "c", "sample_idx": 0, "correct": False, "n_tokens": 1, "difficulty": 3},
                {"prompt_id": "d", "sample_idx": 0, "correct": False, "n_tokens": 1, "difficulty": None}])
    by_d = trace_stats(t)["accuracy_by_difficulty"]
    assert list(by_d) == ["2", "3"]  # easiest first; rows without a difficulty are left out
    assert by_d == {"2": {"rows": 1, "accuracy": 1.0}, "3": {"rows": 2, "accuracy": 0.5}}
    assert "accuracy_by_difficulty" not in trace_stats(_table([{"prompt_id": "a", "sample_idx": 0, "correct": True,
                                                                "n_tokens": 1, "difficulty": None}]))


def test_filters_make_a_new_trace_set(tmp_path):
    src = tmp_path / "tr"
    run_traces(load_config(TracesRun, None, traces_args(src, n_prompts=8, **{"sampling.n": 3})))
    table = read_traces(src)
    stats = filter_traces(str(src), str(tmp_path / "short"), max_tokens=5)
    assert stats["rows"] == sum(1 for n in table["n_tokens"].to_pylist() if n <= 5)
    short = read_traces(tmp_path / "short")
    assert max(short["n_tokens"].to_pylist(), default=0) <= 5
    assert read_manifest(tmp_path / "short")["params"]["filters"]["max_tokens"] == 5
    with pytest.raises(DataError, match="at least one filter"):
        filter_traces(str(src), str(tmp_path / "none"))


def test_first_k_correct_and_correct_only_on_known_rows(tmp_path):
    from retort.lm.data.traces import TraceWriter

    rows = [{"prompt_id": p, "sample_idx": i, "correct": ok, "n_tokens": 1}
            for p, oks in {"a": [True, True, False], "b": [False, True, True], "c": [False, False, False]}.items()
            for i, ok in enumerate(oks)]
    w = TraceWriter(tmp_path / "src", {"x": 1}, {}, {0: len(rows)})
    w.write_shard(0, _table(rows))
    w.finish(trace_stats(_table(rows)))
    stats = filter_traces(str(tmp_path / "src"), str(tmp_path / "out"), correct_only=True, first_k_correct=1)
    got = read_traces(tmp_path / "out").to_pylist()
    assert [(r["prompt_id"], r["sample_idx"]) for r in got] == [("a", 0), ("b", 1)]
    assert stats["rows"] == 2


def test_sft_trains_on_traces_correct_only_by_default(tmp_path):
    from retort.lm.data.traces import TraceWriter

    model, tok = load_model(ModelConfig(name="preset:nano"))
    from retort.lm.traces import tokenizer_sha256

    rows = []
    for i in range(20):
        prompt, completion = f"Q:{i % 10}+1\n", f"{i % 10}+1={(i + 1) % 10}\nA:{(i + 1) % 10}"
        ids = tok(completion, add_special_tokens=False)["input_ids"]
        rows.append({"prompt_id": str(i), "sample_idx": 0, "prompt": prompt, "completion": completion,
                     "completion_ids": ids, "completion_logprobs": [-0.1] * len(ids), "correct": i % 2 == 0,
                     "n_tokens": len(ids)})
    w = TraceWriter(tmp_path / "tr", {"x": 1}, {"tokenizer_sha256": tokenizer_sha256(tok)}, {0: 20})
    w.write_shard(0, _table(rows))
    w.finish(trace_stats(_table(rows)))
    run = load_config(TrainRun, None, [f"out={tmp_path / 'run'}", "student.name=preset:nano", "train.steps=3",
                                       "train.batch_size=4", "data.source=traces", f"data.traces={tmp_path / 'tr'}",
                                       "train.save_every=0"])
    from retort.lm.methods.base import MethodContext
    from retort.lm.methods.sft import SFT
    from retort.lm.tasks import get_task

    sft = SFT(MethodContext(run=run, task=get_task(run.task), tokenizer=tok), SFT.Config())
    examples = sft.examples()
    assert len(examples) == 10  # the 10 correct rows
    assert examples[0].input_ids[-1] == tok.eos_token_id
    summary = train(run)
    assert summary["steps"] == 3
    bad = load_config(TrainRun, None, [f"out={tmp_path / 'r2'}", "data.source=traces", f"data.traces={tmp_path}"])
    with pytest.raises(DataError, match="not a trace directory"):
        train(bad)


def test_an_unfinished_set_is_usable_and_its_n_prompts_can_change_on_resume(tmp_path, capsys):
    from retort.cli import main

    out = tmp_path / "tr"
    run_traces(load_config(TracesRun, None, traces_args(out, **{"sampling.topk": 0})))  # 3 shards of 4 prompts
    full = read_traces(out)
    manifest = json.loads((out / MANIFEST).read_text())
    (out / manifest["shards"].pop("2")["file"]).unlink()  # as if killed before the last shard
    manifest["complete"] = False
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="not finished"):
        read_traces(out)  # training still wants a finished set
    assert main(["curate", str(out), "--stats"]) == 0
    got = capsys.readouterr()
    stats = json.loads(got.out)
    assert stats["rows"] == 16 and stats["unfinished"] == {"prompts_planned": 12, "prompts": 8}
    err = " ".join(got.err.split())  # rich wraps its lines
    assert "its 2 of 3 finished shards, 16 rows holding 8 of the 12 planned prompts" in err
    assert main(["curate", str(out), "--correct", "--out", str(tmp_path / "ok")]) == 0
    assert "8 of the 12 planned prompts" in " ".join(capsys.readouterr().err.split())
    assert read_traces(tmp_path / "ok").num_rows == sum(full["correct"].to_pylist()[:16])

    # a lower n_prompts finishes the set at that size: shard 0 kept, shard 1 cut to 2 prompts
    before = (out / "part-00000.parquet").stat().st_mtime_ns
    run_traces(load_config(TracesRun, None, traces_args(out, n_prompts=6, **{"sampling.topk": 0})))
    small = read_traces(out)
    assert small.num_rows == 12 and small["prompt_id"].to_pylist() == full["prompt_id"].to_pylist()[:12]
    assert small["completion"].to_pylist() == full["completion"].to_pylist()[:12]
    assert (out / "part-00000.parquet").stat().st_mtime_ns == before  # not sampled again
    m = read_manifest(out)
    assert m["complete"] and m["params"]["n_prompts"] == 6 and m["stats"]["prompts"] == 6
    assert [(r["from"], r["to"], r["dropped_rows"]) for r in m["resized"]] == [(12, 6, 4)]
    # a higher one continues it: the cut shard is redone, one more is sampled
    run_traces(load_config(TracesRun, None, traces_args(out, n_prompts=10, **{"sampling.topk": 0})))
    grown = read_traces(out)
    assert grown["prompt_id"].to_pylist() == full["prompt_id"].to_pylist()[:20]
    # seeded per shard: the redone shard 1 is sampled as it first was (shard 2 now holds 2 prompts, not 4)
    assert grown["completion"].to_pylist()[:16] == full["completion"].to_pylist()[:16]
    assert [r["to"] for r in read_manifest(out)["resized"]] == [6, 10]
    with pytest.raises(DataError, match=r"differ at n_prompts, sampling.temperature"):  # not with another change
        run_traces(load_config(TracesRun, None, traces_args(out, n_prompts=4, **{"sampling.topk": 0,
                                                                                 "sampling.temperature": 0.5})))


def test_a_resize_killed_midway_is_finished_by_the_next_run(tmp_path, monkeypatch):
    from retort.lm.data.traces import TraceWriter

    out = tmp_path / "tr"
    args = lambda n: load_config(TracesRun, None, traces_args(out, n_prompts=n, **{"sampling.topk": 0}))  # noqa: E731
    run_traces(args(12))
    full = read_traces(out)
    real = TraceWriter.write_shard

    def killed(self, index, rows, extra=None):
        raise KeyboardInterrupt  # as if killed while the cut shard is rewritten

    monkeypatch.setattr(TraceWriter, "write_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        run_traces(args(6))
    monkeypatch.setattr(TraceWriter, "write_shard", real)
    run_traces(args(6))
    small = read_traces(out)
    assert small["prompt_id"].to_pylist() == full["prompt_id"].to_pylist()[:12]
    assert small["completion"].to_pylist()[:8] == full["completion"].to_pylist()[:8]  # shard 0 kept
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    assert [r["to"] for r in read_manifest(out)["resized"]] == [6]

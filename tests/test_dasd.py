"""DASD's data pieces: divergence-aware selection and mixed-policy rows (retort.lm.curate.das / mixed)."""

from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pytest
import torch

from retort.lm.config import ModelConfig, TaskConfig
from retort.lm.curate import filter_traces, trace_stats
from retort.lm.curate.das import das_score, select_top, sentence_token_bounds
from retort.lm.data.collate import encode_prompt
from retort.lm.data.traces import SCHEMA, TraceWriter, read_manifest, read_traces
from retort.errors import DataError
from retort.lm.models import load_model, save_model
from retort.lm.rollout.score import score
from retort.lm.traces import tokenizer_sha256, weights_sha256


class WordTok:
    """Controlled tokenizer: token i decodes to WORDS[i] (multi-character tokens)."""

    WORDS = ["ab", "c\n", "d", "e.", " f", "gh\n", "i"]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.WORDS[i] for i in ids)


def test_sentence_bounds_assign_each_token_to_the_sentence_its_text_ends_in():
    # text "abc\nde. fgh\ni": sentences "abc\n", "de. ", "fgh\n", "i"
    ids = list(range(7))
    text = WordTok().decode(ids)
    ends = list(np.cumsum([4, 4, 4, 1]))
    assert text == "abc\nde. fgh\ni"
    # "ab","c\n" end in s0; "d","e." end in s1 (" " of s1 is carried by " f", which ends in s2)
    assert sentence_token_bounds(WordTok(), ids, ends) == [2, 4, 6, 7]
    # a character tokenizer: one token per character, bounds are the character ends
    _, tok = load_model(ModelConfig(name="preset:nano"))
    cids = tok(text, add_special_tokens=False)["input_ids"]
    assert sentence_token_bounds(tok, cids, ends) == [4, 8, 12, 13]


def test_das_score_counts_teacher_and_student_sentences():
    got = das_score([-0.1, -3.0, -1.0, None, -2.0], [-2.0, -0.5, -1.5, -1.0, None], delta=1.0)
    # d = 1.9 (teacher), -2.5 (student), 0.5 (neither); two sentences lack tokens on one side
    assert (got.teacher_sentences, got.student_sentences, got.sentences) == (1, 1, 3)
    assert got.score == 0.0
    assert das_score([-0.1], [-2.0]).score == 1.0


def test_select_top_keeps_the_best_per_prompt_ties_to_the_earlier_sample():
    from retort.lm.curate.das import DasScore

    pids, idx = ["a", "a", "a", "b", "b"], [0, 1, 2, 0, 1]
    scores = {i: DasScore(s, 0, 0, 1) for i, s in enumerate([0.2, 0.5, 0.5, -1.0, -0.5])}
    assert select_top(pids, idx, list(range(5)), scores, keep=1) == [1, 4]
    assert select_top(pids, idx, list(range(5)), scores, keep=2) == [1, 2, 3, 4]


def _trace_set(path, rows, teacher="preset:nano", tok=None, **params):
    meta = {"tokenizer_sha256": tokenizer_sha256(tok)} if tok is not None else {}
    w = TraceWriter(path, {"teacher": asdict(ModelConfig(name=teacher)), "task": asdict(TaskConfig()), **params},
                    meta, {0: len(rows)})
    base = {"topk": None, "answer": "1", "reference": "1", "finish_reason": "stop", "difficulty": 1}
    table = pa.Table.from_pylist([{**base, **r} for r in rows], schema=SCHEMA)
    w.write_shard(0, table)
    w.finish(trace_stats(table))


def test_das_keeps_the_trace_the_teacher_finds_likelier_than_the_student(tmp_path):
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=3)
    student_dir = tmp_path / "student"
    save_model(model, tok, student_dir)
    completion = "1+2=3\n3*4=12\nA:12"
    ids = tok(completion, add_special_tokens=False)["input_ids"]
    rows = []
    for j, teacher_lp in enumerate([-30.0, 0.0, -30.0]):  # sample 1: the teacher is certain of every token
        rows.append({"prompt_id": "q", "sample_idx": j, "prompt": "Q:1+2\n", "completion": completion,
                     "completion_ids": ids, "completion_logprobs": [teacher_lp] * len(ids), "correct": True,
                     "n_tokens": len(ids)})
    rows.append({**rows[1], "prompt_id": "r", "sample_idx": 0})
    _trace_set(tmp_path / "src", rows, tok=tok)
    stats = filter_traces(str(tmp_path / "src"), str(tmp_path / "das"), correct_only=True,
                          das_student=str(student_dir))
    got = read_traces(tmp_path / "das").to_pylist()
    assert [(r["prompt_id"], r["sample_idx"]) for r in got] == [("q", 1), ("r", 0)]
    # the student's sentence means, by a direct forward pass: d(s) = 0 - mean lp_S(s) > 1 nat for each
    sc = score(model, [encode_prompt(tok, "Q:1+2\n")], [ids])[0].logprobs
    means = [np.mean(sc[a:b]) for a, b in [(0, 6), (6, 13), (13, 17)]]
    assert all(-m > 1.0 for m in means)
    assert stats["das"]["score_mean_kept"] == 1.0
    assert stats["das"]["score_mean_all"] == pytest.approx((1 - 1 - 1 + 1) / 4)
    assert read_manifest(tmp_path / "das")["params"]["filters"]["das"] == {
        "student": str(student_dir), "student_weights_sha256": weights_sha256(model), "keep": 1, "delta": 1.0, "rule": "das"}
    with pytest.raises(DataError, match="does not combine"):
        filter_traces(str(tmp_path / "src"), str(tmp_path / "x"), das_student=str(student_dir), first_k_correct=1)


def _eos_happy_teacher(path, tok):
    """A nano model that ends its samples within a few tokens: the EOS row of its head points along
    the mean of its final hidden states (p(EOS) ~ 0.5 per step)."""
    model, _ = load_model(ModelConfig(name="preset:nano"), seed=5)
    with torch.no_grad():
        mu = model.model(torch.randint(4, 100, (8, 20), generator=torch.Generator().manual_seed(0))
                         ).last_hidden_state.reshape(-1, model.config.hidden_size).mean(0)
        model.lm_head.weight[tok.eos_token_id] = 3 * mu / mu.norm() ** 2
    save_model(model, tok, path)
    return model


def test_mixed_policy_rows_are_student_prefix_plus_verified_teacher_continuation(tmp_path, monkeypatch):
    from retort.lm.curate import mixed

    _, tok = load_model(ModelConfig(name="preset:nano"))
    teacher = _eos_happy_teacher(tmp_path / "teacher", tok)
    student, _ = load_model(ModelConfig(name="preset:nano"), seed=9)
    save_model(student, tok, tmp_path / "student")
    rows = []
    for q in range(6):
        comp = f"{q}+1={q + 1}\nA:{q + 1}"
        ids = tok(comp, add_special_tokens=False)["input_ids"]
        rows.append({"prompt_id": f"p{q}", "sample_idx": 0, "prompt": f"Q:{q}+1\n", "completion": comp,
                     "completion_ids": ids, "completion_logprobs": [-0.5] * len(ids), "correct": True,
                     "n_tokens": len(ids)})
    _trace_set(tmp_path / "src", rows, teacher=str(tmp_path / "teacher"), tok=tok,
               teacher_weights_sha256=weights_sha256(teacher),
               sampling={"temperature": 1.0, "max_new_tokens": 12, "topk": 0})

    class AcceptAll:  # a controlled verifier: this test checks the data flow, not the arithmetic
        def verify(self, text, ref, question=None):
            return True

        def extract_answer(self, text, question=None):
            return None

    monkeypatch.setattr("retort.lm.tasks.get_task", lambda cfg: AcceptAll())
    stats = mixed.mixed_policy(str(tmp_path / "src"), str(tmp_path / "mix"), str(tmp_path / "student"),
                               source="all", shard_prompts=4, with_source=True, seed=1)
    got = read_traces(tmp_path / "mix").to_pylist()
    counts = stats["mixed_policy"]
    assert counts["student_rollouts"] == 6 and counts["kept"] >= 1
    assert len(got) == 6 + counts["kept"]
    new = [r for r in got if r["sample_idx"] == 1]
    assert len(new) == counts["kept"]
    from retort.lm.rollout.generate import generate_ids

    for index, shard in enumerate([rows[:4], rows[4:]]):  # the student's samples, as mixed_policy drew them
        caps = [int(np.ceil(1.5 * x["n_tokens"])) for x in shard]
        outs = generate_ids(student, tok, [encode_prompt(tok, x["prompt"]) for x in shard], max_new_tokens=max(caps),
                            temperature=1.0, seed=mixed._seed(1, "student", index))
        for x, cap, o in zip(shard, caps, outs):
            sample = o[0].token_ids[:cap]
            r = next((r for r in new if r["prompt_id"] == x["prompt_id"]), None)
            if r is None:
                continue
            cuts = [c for c in range(len(sample)) if c > 0.5 * len(sample) and r["completion_ids"][:c] == sample[:c]]
            assert cuts, "a mixed row starts with more than half of the student's own answer"
    for r in new:
        # the teacher's continuation of the student's prefix, scored by the teacher token by token
        prompt = encode_prompt(tok, r["prompt"])
        want = score(teacher, [prompt], [r["completion_ids"]])[0].logprobs
        assert r["completion_logprobs"] == pytest.approx(want, abs=1e-5)
        assert tok.decode(r["completion_ids"], skip_special_tokens=True) == r["completion"]
        source_len = next(x["n_tokens"] for x in rows if x["prompt_id"] == r["prompt_id"])
        assert r["n_tokens"] >= 2  # a prefix of at least one student token, then the teacher
        assert source_len > 0
    # rerun: the same command finds the finished shards and writes nothing new
    again = mixed.mixed_policy(str(tmp_path / "src"), str(tmp_path / "mix"), str(tmp_path / "student"),
                               source="all", shard_prompts=4, with_source=True, seed=1)
    assert again["rows"] == stats["rows"]
    assert read_traces(tmp_path / "mix").to_pylist() == got
    # another teacher than the one that made the traces is refused
    with torch.no_grad():
        changed, _ = load_model(ModelConfig(name=str(tmp_path / "teacher")))
        changed.lm_head.weight.add_(1.0)
        save_model(changed, tok, tmp_path / "teacher")
    with pytest.raises(DataError, match="has changed"):
        mixed.mixed_policy(str(tmp_path / "src"), str(tmp_path / "mix2"), str(tmp_path / "student"), source="all")


def test_cli_curate_das_and_mixed_policy_argument_errors(tmp_path, capsys):
    from retort.cli import main

    model, tok = load_model(ModelConfig(name="preset:nano"), seed=3)
    save_model(model, tok, tmp_path / "student")
    ids = tok("1+1=2\nA:2", add_special_tokens=False)["input_ids"]
    rows = [{"prompt_id": "q", "sample_idx": j, "prompt": "Q:1+1\n", "completion": "1+1=2\nA:2",
             "completion_ids": ids, "completion_logprobs": [-0.1] * len(ids), "correct": True, "n_tokens": len(ids)}
            for j in range(2)]
    _trace_set(tmp_path / "src", rows, tok=tok)
    assert main(["curate", str(tmp_path / "src"), "--out", str(tmp_path / "das"), "--correct", "--das",
                 str(tmp_path / "student")]) == 0
    assert read_traces(tmp_path / "das").num_rows == 1
    assert main(["curate", str(tmp_path / "src"), "--out", str(tmp_path / "m"), "--correct", "--mixed-policy",
                 str(tmp_path / "student")]) == 2
    assert "separate curate step" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_select_top_rules_teacher_guided_likeliest_and_random():
    from retort.lm.curate.das import DasScore

    pids, idx = ["a", "a", "a", "b", "b"], [0, 1, 2, 0, 1]
    scores = {i: DasScore(s, 0, 0, 1, lp) for i, (s, lp) in
              enumerate([(0.9, -3.0), (0.1, -0.2), (0.5, -1.0), (-1.0, -0.1), (0.5, -2.0)])}
    rows = list(range(5))
    assert select_top(pids, idx, rows, scores, keep=1, rule="das") == [0, 4]
    assert select_top(pids, idx, rows, scores, keep=1, rule="likeliest") == [1, 3]
    r0 = select_top(pids, idx, rows, scores, keep=1, rule="random", seed=0)
    assert r0 == select_top(pids, idx, rows, scores, keep=1, rule="random", seed=0)  # seeded
    assert len(r0) == 2 and {pids[i] for i in r0} == {"a", "b"}
    draws = {tuple(select_top(pids, idx, rows, scores, keep=1, rule="random", seed=s)) for s in range(20)}
    assert len(draws) > 1  # other seeds, other picks
    with pytest.raises(ValueError, match="rule"):
        select_top(pids, idx, rows, scores, keep=1, rule="best")

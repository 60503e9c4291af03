"""MinD (multi-turn decomposition): the segmentation rules and the turn format on known examples,
the turn-count reward on scripted answers, `curate --multi-turn` with a scripted teacher and with
the rule, and a tiny run of the whole recipe: curate -> sft -> grpo with the MinD reward -> eval."""

import json
from dataclasses import asdict

import pyarrow as pa
import pytest
from conftest import tiny_overrides

from retort.cli import main
from retort.config import load_config
from retort.lm.config import ModelConfig, TaskConfig, TrainRun
from retort.lm.curate import mind
from retort.lm.curate.stats import trace_stats
from retort.lm.data.traces import SCHEMA, TraceWriter, read_traces
from retort.lm.data.turns import (
    mind_reward,
    parse_turns,
    read_turns,
    render_turns,
    turn_stats,
)
from retort.lm.eval.run import turn_metrics
from retort.lm.models import load_model
from retort.lm.rollout.generate import Completion
from retort.lm.tasks import get_task
from retort.lm.traces import tokenizer_sha256
from retort.train import train

DETOURS = {"name": "detours", "difficulty": {}}
TRACE = "9-8=9 wait, 9-8=1\n1*9=9\n9-1=8\ncheck 9-8=1 1*9=9 9-1=8\nA:8"


@pytest.fixture
def task():
    return get_task(TaskConfig(name="detours"))


# ---- rules ----

def test_a_trace_is_cut_before_each_thought_switch_and_every_few_steps(task):
    body, final = mind.split_answer(TRACE, task, "Q:9-8*9-1\n")
    assert (body, final) == ("9-8=9 wait, 9-8=1\n1*9=9\n9-1=8\ncheck 9-8=1 1*9=9 9-1=8", "8")
    assert mind.segment(body, ("wait", "check"), "\n") == ["9-8=9", "wait, 9-8=1\n1*9=9\n9-1=8",
                                                           "check 9-8=1 1*9=9 9-1=8"]
    assert mind.segment(body, ("wait", "check"), "\n", unit_steps=2) == ["9-8=9", "wait, 9-8=1\n1*9=9", "9-1=8",
                                                                         "check 9-8=1 1*9=9 9-1=8"]
    # an LLM's trace: paragraphs are steps, and the general words in any case ("Alternatively", "wait")
    llm = "Let x = 3.\n\nThen 2x = 6. Alternatively, x + x = 6.\n\nwait, is 6 right? Yes."
    assert mind.segment(llm, ("Wait", "Alternatively"), "\n\n") == ["Let x = 3.\n\nThen 2x = 6.",
                                                                    "Alternatively, x + x = 6.",
                                                                    "wait, is 6 right? Yes."]
    assert mind.split_answer("no answer here", task) == ("no answer here", None)
    assert mind.last_result("9-8=9 wait, 9-8=1\n1*9=9") == "9" and mind.last_result("x") is None
    assert mind.answer_cue(task) == "A:"
    assert mind.join_unanswered(["a", "b", "c"], [None, "1", "2"], "\n") == (["a\nb", "c"], ["1", "2"], 1)


def test_the_turn_format_round_trips_and_malformed_text_is_refused(task):
    units, answers = ["9-8=9", "wait, 9-8=1\n1*9=9"], ["A:9", "A:9"]
    text = render_turns(units, answers)
    assert text == "<think>\n9-8=9\n</think>\nA:9\n<think>\nwait, 9-8=1\n1*9=9\n</think>\nA:9"
    assert parse_turns(text) == list(zip(units, answers))
    assert task.verify(text, "9")
    for bad in ["9-8=1\nA:1",                                 # no turn
                "x <think>\n1\n</think>\nA:1",                 # text before the first turn
                "<think>\n1\n</think>\n",                      # a turn without its answer
                "<think>\n1\n</think>\nA:1\n<think>\n2",       # a unit left open
                "<think>\n1 <think> 2\n</think>\nA:1",         # a unit holding another
                "<think>\n1\n</think>\nA:1 </think>"]:         # a stray close
        assert parse_turns(bad) is None, bad
    assert parse_turns("<think>1</think>so") == [("1", "so")]
    assert read_turns("<think>1</think>so", task) is None  # the task reads no answer in "so"
    with pytest.raises(ValueError):
        render_turns(["a"], [])


def test_the_reward_prefers_correct_in_fewer_turns_then_wrong_then_malformed(task):
    one = render_turns(["9-8=1\n1*9=9\n9-1=8"], ["A:8"])
    three = render_turns(["9-8=9", "wait, 9-8=1\n1*9=9", "9-1=8"], ["A:9", "A:9", "A:8"])
    wrong = render_turns(["9-8=1\n1*9=9\n9-1=7"], ["A:7"])
    malformed = "9-8=1\n1*9=9\n9-1=8\nA:8"  # right answer, no turns
    r = [mind_reward(t, "8", "Q:9-8*9-1\n", task, eta=0.5, k_max=8) for t in (one, three, wrong, malformed)]
    assert r == [pytest.approx(1 + 0.5 * 7 / 8), pytest.approx(1 + 0.5 * 5 / 8), 0.0, -1.0]
    assert r[0] > r[1] > r[2] > r[3]
    many = render_turns(["1"] * 12, ["A:8"] * 12)  # past k_max: never below a wrong answer
    assert mind_reward(many, "8", None, task, k_max=8) == 1.0


def test_turn_metrics_count_turns_and_tokens_to_the_first_answer():
    tok = load_model(ModelConfig(name="preset:nano"))[1]  # one token per character
    texts = [render_turns(["ab", "cd"], ["A:1", "A:2"]), "no turns here"]
    assert turn_stats(texts[0], len) == {"turns": 2, "well_formed": True,
                                         "first_answer_tokens": len("<think>\nab\n</think>")}
    m = turn_metrics(tok, texts)
    assert m == {"turns": 2.0, "turn_format": 0.5,
                 "first_answer_tokens": (len("<think>\nab\n</think>") + len("no turns here")) / 2}


# ---- curate --multi-turn ----

def _trace_set(path, rows, tok, teacher="preset:nano"):
    params = {"teacher": asdict(ModelConfig(name=teacher)), "task": DETOURS, "sampling": {"max_new_tokens": 96}}
    w = TraceWriter(path, params, {"tokenizer_sha256": tokenizer_sha256(tok)}, {0: len(rows)})
    full = []
    for i, r in enumerate(rows):
        ids = tok(r["completion"], add_special_tokens=False)["input_ids"]
        full.append({"topk": None, "finish_reason": "stop", "difficulty": 3, "completion_logprobs": [],
                     "correct": True, "prompt_id": f"p{i}", "sample_idx": 0, "completion_ids": ids,
                     "n_tokens": len(ids), "answer": r["reference"], **r})
    table = pa.Table.from_pylist(full, schema=SCHEMA)
    w.write_shard(0, table)
    w.finish(trace_stats(table))


class Scripted:
    """A teacher whose continuations are given (`replies[prefix]`); any other prefix gets an empty line."""

    def __init__(self, tok, replies):
        self.tok, self.replies, self.model, self.is_teacher, self.name = tok, replies, None, False, "scripted"
        self.asked = []

    def scorer(self):
        return None

    def continue_(self, prompts, prefixes, *, n, **_):
        self.asked += prefixes
        return [[Completion(self.replies.get(x, "\n"), [], "stop")] * n for x in prefixes]


def test_multi_turn_asks_the_teacher_for_each_prefix_answer_and_joins_unanswered_units(tmp_path, monkeypatch):
    from retort.lm.rollout import revise

    tok = load_model(ModelConfig(name="preset:nano"))[1]
    _trace_set(tmp_path / "src", [{"prompt": "Q:9-8*9-1\n", "completion": TRACE, "reference": "8"},
                                  {"prompt": "Q:1+1\n", "completion": "1+1=2\nA:2", "reference": "2"},
                                  {"prompt": "Q:1+2\n", "completion": "1+2=3", "reference": "3"}], tok)
    script = Scripted(tok, {"9-8=9\nA:": "9\n", "9-8=9\nwait, 9-8=1\n1*9=9\n9-1=8\nA:": "8"})
    monkeypatch.setattr(revise, "Reviser", lambda *a, **k: script)
    stats = mind.multi_turn(str(tmp_path / "src"), str(tmp_path / "out"), unit_steps=0)
    assert script.asked == ["9-8=9\nA:", "9-8=9\nwait, 9-8=1\n1*9=9\n9-1=8\nA:"]
    rows = read_traces(tmp_path / "out").to_pylist()
    assert [r["completion"] for r in rows] == [
        render_turns(["9-8=9", "wait, 9-8=1\n1*9=9\n9-1=8", "check 9-8=1 1*9=9 9-1=8"], ["A:9", "A:8", "A:8"]),
        render_turns(["1+1=2"], ["A:2"])]
    assert all(r["correct"] and r["n_tokens"] == len(r["completion"]) for r in rows)
    c = stats["multi_turn_counts"]
    assert (c["traces"], c["written"], c["turns"], c["joined"], c["skipped"]) == (3, 2, 4, 0, 1)
    # the teacher cannot answer the first prefix: that unit is joined to the next
    script.replies.pop("9-8=9\nA:")
    mind.multi_turn(str(tmp_path / "src"), str(tmp_path / "out2"), unit_steps=0)
    first = read_traces(tmp_path / "out2").to_pylist()[0]["completion"]
    assert parse_turns(first)[0] == ("9-8=9\nwait, 9-8=1\n1*9=9\n9-1=8", "A:8")


def test_multi_turn_from_the_cli_with_the_rule_and_its_conflicts(tmp_path, capsys):
    tok = load_model(ModelConfig(name="preset:nano"))[1]
    _trace_set(tmp_path / "src", [{"prompt": "Q:9-8*9-1\n", "completion": TRACE, "reference": "8"}], tok)
    assert main(["curate", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--multi-turn",
                 "--intermediate", "last-result", "--unit-steps", "2"]) == 0
    (row,) = read_traces(tmp_path / "out").to_pylist()
    assert parse_turns(row["completion"]) == [("9-8=9", "A:9"), ("wait, 9-8=1\n1*9=9", "A:9"), ("9-1=8", "A:8"),
                                              ("check 9-8=1 1*9=9 9-1=8", "A:8")]
    assert "1 of 1 traces in turns (4 turns" in capsys.readouterr().err
    # the real teacher (preset:nano, untrained) writes each prefix's answer: whatever it writes after "A:" is
    # read as one (or the unit is joined), the final answer stays the trace's
    assert main(["curate", str(tmp_path / "src"), "--out", str(tmp_path / "teacher"), "--multi-turn",
                 "--unit-steps", "2", "--answer-tokens", "4"]) == 0
    (row,) = read_traces(tmp_path / "teacher").to_pylist()
    turns = read_turns(row["completion"], get_task(TaskConfig(name="detours")))
    assert turns and turns[-1] == ("check 9-8=1 1*9=9 9-1=8", "A:8") and row["correct"]
    assert main(["curate", str(tmp_path / "src"), "--out", str(tmp_path / "x"), "--multi-turn", "--correct"]) == 2
    assert main(["curate", str(tmp_path / "src"), "--out", str(tmp_path / "x"), "--answer-cue", "A:"]) == 2
    assert not (tmp_path / "x").exists()


# ---- the recipe, tiny ----

def test_curate_then_sft_then_grpo_with_the_mind_reward_then_eval(tmp_path):
    tok = load_model(ModelConfig(name="preset:nano"))[1]
    task = get_task(TaskConfig(name="detours"))
    rows = [{"prompt": ex.prompt, "completion": ex.solution, "reference": ex.answer}
            for ex in task.examples("train", 16, 0)]
    _trace_set(tmp_path / "src", rows, tok)
    assert main(["curate", str(tmp_path / "src"), "--out", str(tmp_path / "mind"), "--multi-turn",
                 "--intermediate", "last-result"]) == 0
    curated = read_traces(tmp_path / "mind").to_pylist()
    assert len(curated) == 16 and all(read_turns(r["completion"], task, r["prompt"]) for r in curated)
    assert sum(len(parse_turns(r["completion"])) for r in curated) > 16  # detours' wait/check: several turns
    sft = load_config(TrainRun, None, tiny_overrides(tmp_path / "sft", steps=6, **{
        "method": "sft", "task.name": "detours", "data.source": "traces", "data.traces": str(tmp_path / "mind"),
        "train.lr": 0.01, "train.warmup_steps": 0, "eval.n": 4}))
    train(sft)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]
    assert losses[-1] < losses[0] - 0.5, losses  # sft learns the turn-format rows
    grpo = load_config(TrainRun, None, tiny_overrides(tmp_path / "grpo", steps=2, **{
        "method": "grpo", "task.name": "detours", "student.name": str(tmp_path / "sft" / "model"),
        "method_args.reward": "mind_turns", "method_args.num_generations": 4, "method_args.max_new_tokens": 24}))
    train(grpo)
    logged = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(logged) == 2
    # the verifier's rewards are 0 or 1; a student this young writes (nearly) no well-formed turns: -1
    assert all(-1.0 <= r["reward"] < 0 for r in logged), logged


def test_eval_reports_turns_when_answers_are_in_the_turn_format(monkeypatch, task):
    from types import SimpleNamespace

    from retort.lm.eval import run as eval_run

    model, tok = load_model(ModelConfig(name="preset:nano"))
    answers = [render_turns(["a", "b", "c"], ["A:1", "A:2", "A:3"]), render_turns(["a"], ["A:3"])]
    monkeypatch.setattr(eval_run, "generate", lambda model, tok, prompts, **kw: [
        [Completion(answers[i % 2], tok(answers[i % 2], add_special_tokens=False)["input_ids"], "stop")]
        for i in range(len(prompts))])
    cfg = SimpleNamespace(split="test", n=4, seed=0, max_new_tokens=8, batch_size=4, k=1)
    result = eval_run.evaluate(model, tok, task, cfg)
    assert (result["turns"], result["turn_format"]) == (2.0, 1.0)
    assert result["first_answer_tokens"] == len("<think>\na\n</think>")
    monkeypatch.setattr(eval_run, "generate", lambda model, tok, prompts, **kw: [
        [Completion("A:3", [1, 2, 3], "stop")] for _ in prompts])
    assert "turns" not in eval_run.evaluate(model, tok, task, cfg)  # answers without turns: no turn metrics

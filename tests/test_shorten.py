"""Shortening traces (retort.lm.curate.shorten): DAP / uniform rewrites, Retro-Search, the cut
baseline. The rules are known-answer tested; the walks run with a scripted reviser (controlled
replies) and, for the plumbing, with a real model through the CLI."""

import json
from dataclasses import asdict

import pyarrow as pa
import pytest
import torch

from retort.cli import main
from retort.lm.config import ModelConfig, TaskConfig
from retort.errors import DataError
from retort.lm.curate import shorten, trace_stats
from retort.lm.data.traces import SCHEMA, TraceWriter, read_manifest, read_traces
from retort.lm.models import load_model, save_model
from retort.lm.rollout.generate import Completion
from retort.lm.tasks import get_task
from retort.lm.traces import tokenizer_sha256, weights_sha256

DETOURS = {"name": "detours", "difficulty": {}}


# ---- rules ----

def test_budgets_parse_every_level_and_refuse_the_rest():
    assert shorten.parse_budgets("easy=30, medium=70,hard=150") == {"easy": 30, "medium": 70, "hard": 150}
    for bad, word in [("easy=30,medium=70", "hard"), ("easy=0,medium=1,hard=2", "easy=0"),
                      ("easy=3,medium=x,hard=2", "medium=x"), ("tiny=3", "tiny")]:
        with pytest.raises(DataError, match=word):
            shorten.parse_budgets(bad)


def test_a_rewrite_reply_gives_its_level_and_text():
    assert shorten.parse_rewrite("D:hard\n1+2=3\nA:3", "dap") == ("hard", "1+2=3\nA:3")
    assert shorten.parse_rewrite("Difficulty: **Easy**\n\nx = 2, so \\boxed{2}", "dap") == ("easy",
                                                                                        "x = 2, so \\boxed{2}")
    assert shorten.parse_rewrite("1+2=3\nA:3", "dap") == (None, "1+2=3\nA:3")
    assert shorten.parse_rewrite("difficulty: medium\nA:3", "uniform") == ("medium", "A:3")


def test_switch_points_are_whole_keywords_after_some_text():
    text = "Wait, no. 2*3=8 wait, 2*3=6\nawaited 6-4=2\ncheck 2*3=6\nA:2"
    pts = shorten.switch_points(text, ("wait", "Wait", "check"))
    # the opening "Wait" has nothing before it; "awaited" is not the word
    assert [text[p:p + 5] for p in pts] == ["wait,", "check"]
    assert shorten.switch_points("Hmm. But wait, x", ("wait", "But wait")) == [5]  # the longer keyword wins
    assert shorten.switch_points("no switch", ()) == []


def test_steps_values_and_the_first_step_rule():
    assert shorten.step_sep(["a\nb", "c\n\nd"]) == "\n\n"
    assert shorten.step_sep(["a\nb"]) == "\n"
    assert shorten.steps("\n6-4=2\n\nA:2", "\n") == ["6-4=2", "A:2"]
    assert shorten.value(2, True, 0.9) == pytest.approx(0.81)
    assert shorten.value(1, False, 0.9) == 0.0
    # the continuation's first step may not hold a keyword; later steps may
    assert shorten.opens_with_switch(" wait, 2*3=6\n6-4=2", "\n", ("wait",))
    assert shorten.opens_with_switch("\n6-4=2 wait, 6-4=2\nA:2", "\n", ("wait",))
    assert not shorten.opens_with_switch("\n6-4=2\nwait, 6-4=2\nA:2", "\n", ("wait",))


def test_cut_to_keeps_whole_steps_from_the_start_and_the_answer():
    count = len
    text = "1+2=3\n3*3=9\n9-1=8\ncheck 1+2=3\nA:8"
    assert shorten.cut_to(text, 100, count, "\n") == text
    assert shorten.cut_to(text, 17, count, "\n") == "1+2=3\n3*3=9\nA:8"
    assert shorten.cut_to(text, 3, count, "\n") == "A:8"
    assert shorten.cut_to("A:8", 1, count, "\n") == "A:8"  # nothing to cut


def test_the_opening_ban_masks_keyword_openers_only_until_a_step_has_begun():
    ban_mask = torch.tensor([False, True, False, False])  # token 1 opens a keyword
    space = torch.tensor([3])  # token 3 is whitespace
    proc = shorten.OpeningBan(2, ban_mask, space)
    scores = torch.zeros(3, 4)
    ids = torch.tensor([[0, 0, 3, 3], [0, 0, 3, 2], [0, 0, 3, 0]])
    out = proc(ids[:, :2], scores.clone())  # nothing generated yet: banned everywhere
    assert torch.isinf(out[:, 1]).all() and not torch.isinf(out[:, [0, 2, 3]]).any()
    out = proc(ids, scores.clone())  # row 0 wrote only whitespace; rows 1-2 began their step
    assert torch.isinf(out[0, 1]) and not torch.isinf(out[1:]).any()


# ---- the walks, with a scripted reviser ----

def _trace_set(path, rows, teacher, *, task=DETOURS, tok=None, weights=None):
    params = {"teacher": asdict(ModelConfig(name=teacher)), "task": task, "sampling": {"max_new_tokens": 64}}
    if weights:
        params["teacher_weights_sha256"] = weights
    meta = {"tokenizer_sha256": tokenizer_sha256(tok)} if tok is not None else {}
    w = TraceWriter(path, params, meta, {0: len(rows)})
    base = {"topk": None, "finish_reason": "stop", "difficulty": 2, "completion_logprobs": [], "correct": True}
    full = []
    for i, r in enumerate(rows):
        row = {**base, "prompt_id": f"p{i}", "sample_idx": 0, **r}
        row.setdefault("completion_ids", tok(row["completion"], add_special_tokens=False)["input_ids"] if tok else [])
        row.setdefault("n_tokens", len(row["completion_ids"]))
        row.setdefault("answer", get_task(TaskConfig(**task)).extract_answer(row["completion"]))
        full.append(row)
    table = pa.Table.from_pylist(full, schema=SCHEMA)
    w.write_shard(0, table)
    w.finish(trace_stats(table))


class Scripted:
    """A reviser whose replies are given: `replies[prompt or prefix]` (controlled inputs)."""

    def __init__(self, tok, replies):
        self.tok, self.replies, self.model, self.is_teacher, self.name = tok, replies, None, False, "scripted"
        self.asked = []

    def scorer(self):
        return None

    def ask(self, texts, **_):
        self.asked += texts
        return [Completion(self.replies.get(t, "?"), [], "stop") for t in texts]

    def continue_(self, prompts, prefixes, *, n, ban=(), **_):
        self.asked += prefixes
        out = []
        for x in prefixes:
            got = self.replies.get(x, [("\nA:0", "stop")])
            out.append([Completion(t, [], fin) for t, fin in (got * n)[:n]])
        return out


@pytest.fixture
def tok():
    return load_model(ModelConfig(name="preset:nano"))[1]


def test_dap_keeps_rewrites_that_keep_the_answer_and_counts_the_rest(tmp_path, tok, monkeypatch):
    src = tmp_path / "src"
    long = "7+5=2\n2*3=8 wait, 2*3=6\ncheck 7+5=2 2*3=6\nA:6"
    prompts = ["Q:7+5*3\n", "Q:1+1*2\n", "Q:2+2*2\n", "Q:3+3*1\n", "Q:4+1*1\n"]
    rows = [{"prompt": p, "completion": long, "reference": "6"} for p in prompts]
    _trace_set(src, rows, "preset:nano", tok=tok)
    tpl = "R {easy} {medium} {hard}|{question}|{trace}"
    ask = [tpl.format(question=p, trace=long, easy=9, medium=20, hard=40) for p in prompts]
    script = Scripted(tok, {ask[0]: "D:easy\n7+5=2\n2*3=6\nA:6",  # kept, over the easy budget of 9
                            ask[1]: "D:medium\nA:6",  # kept
                            ask[2]: "D:hard\n7+5=2\nA:5",  # the answer changed
                            ask[3]: "7+5=2\nA:6",  # no level
                            })
    monkeypatch.setattr(shorten, "Reviser", lambda *a, **k: script)
    stats = shorten.rewrite(str(src), str(tmp_path / "dap"), budgets={"easy": 9, "medium": 20, "hard": 40},
                            template=tpl)
    c = stats["rewrite_counts"]
    assert (c["traces"], c["kept"], c["over_budget"]) == (5, 2, 1)
    assert c["rejected"] == {"answer_changed": 1, "no_level": 2}  # ask[4] got "?"
    out = read_traces(tmp_path / "dap").to_pylist()
    assert [r["completion"] for r in out] == ["7+5=2\n2*3=6\nA:6", "A:6"]
    assert [r["n_tokens"] for r in out] == [len("7+5=2\n2*3=6\nA:6"), 3]  # re-tokenised, one per character
    assert all(r["correct"] for r in out)
    assert c["levels"] == {"easy|2": 1, "medium|2": 1}
    # a rerun finds every shard done and asks nothing
    script.asked.clear()
    shorten.rewrite(str(src), str(tmp_path / "dap"), budgets={"easy": 9, "medium": 20, "hard": 40}, template=tpl)
    assert script.asked == []


def test_uniform_rewrite_needs_its_budget_and_the_template_its_fields(tmp_path, tok, monkeypatch):
    src = tmp_path / "src"
    _trace_set(src, [{"prompt": "Q:1+1\n", "completion": "1+1=2\nA:2", "reference": "2"}], "preset:nano", tok=tok)
    monkeypatch.setattr(shorten, "Reviser", lambda *a, **k: Scripted(tok, {}))
    with pytest.raises(DataError, match="--budget"):
        shorten.rewrite(str(src), str(tmp_path / "u"), mode="uniform")
    with pytest.raises(DataError, match=r"\{budget\}"):
        shorten.rewrite(str(src), str(tmp_path / "u"), mode="uniform", budget=5, template="{question}{trace}")
    stats = shorten.rewrite(str(src), str(tmp_path / "u"), mode="uniform", budget=5,
                            template="u{budget}|{question}|{trace}")
    assert stats["rewrite_counts"]["rejected"] == {"answer_changed": 1}  # the scripted "?" has no answer


def test_retro_search_replaces_the_rest_when_the_untaken_path_is_right_and_shorter(tmp_path, tok, monkeypatch):
    src = tmp_path / "src"
    doubt = "7+5=2\n2*3=6 wait, 2*3=6\n6-4=2\ncheck 7+5=2 2*3=6 6-4=2\nA:2"
    wrong = "7+5=2\n2*3=8 wait, 2*3=6\n6-4=2\ncheck 7+5=2 2*3=6 6-4=2\nA:2"
    _trace_set(src, [{"prompt": "Q:7+5*3-4\n", "completion": doubt, "reference": "2"},
                     {"prompt": "Q:7+5*3-4\n", "completion": wrong, "reference": "2", "sample_idx": 1,
                      "prompt_id": "p0"}], "preset:nano", tok=tok)
    script = Scripted(tok, {
        # the doubt: the first draw switches again (not the untaken path); the second goes on and
        # reaches the answer in 3 steps where the original took 4: taken
        "7+5=2\n2*3=6": [(" wait, 2*3=6\n6-4=2\nA:2", "stop"), ("\n6-4=2\ncheck 6-4=2\nA:2", "stop")],
        # the wrong step: going on from it fails, so the correction stays
        "7+5=2\n2*3=8": [("\n8-4=4\nA:4", "stop")],
        # the re-check after the kept correction: the answer right away (1 step < 2)
        "7+5=2\n2*3=8 wait, 2*3=6\n6-4=2": [("\nA:2", "stop")],
    })  # any other prefix gets "\nA:0" (wrong): the revised doubt's re-check stays
    monkeypatch.setattr(shorten, "Reviser", lambda *a, **k: script)
    stats = shorten.retro_search(str(src), str(tmp_path / "rs"), gamma=0.9, tries=2)
    out = {r["sample_idx"]: r["completion"] for r in read_traces(tmp_path / "rs").to_pylist()}
    assert out == {0: "7+5=2\n2*3=6\n6-4=2\ncheck 6-4=2\nA:2", 1: "7+5=2\n2*3=8 wait, 2*3=6\n6-4=2\nA:2"}
    c = stats["retro_counts"]
    assert (c["traces"], c["switches"], c["revisions"], c["revised_traces"], c["wrong"], c["no_untaken_path"]) == \
        (2, 4, 2, 2, 2, 0)
    assert c["rollouts"] == 8  # 2 per switch


def test_retro_search_walks_on_in_the_revised_trace_and_partial_stops_at_the_first(tmp_path, tok, monkeypatch):
    src = tmp_path / "src"
    trace = "1+1=2\n2+1=3 wait, 2+1=3\n3+1=4 wait, 3+1=4\ncheck 1+1=2 2+1=3 3+1=4\nA:4"
    _trace_set(src, [{"prompt": "Q:1+1+1+1\n", "completion": trace, "reference": "4"}], "preset:nano", tok=tok)
    replies = {"1+1=2\n2+1=3": [("\n3+1=4\ncheck 3+1=4\nA:4", "stop")],  # 3 steps < 4: taken
               "1+1=2\n2+1=3\n3+1=4": [("\nA:4", "stop")]}  # then the next switch: 1 step < 3: taken
    script = Scripted(tok, replies)
    monkeypatch.setattr(shorten, "Reviser", lambda *a, **k: script)
    c = shorten.retro_search(str(src), str(tmp_path / "rs"))["retro_counts"]
    assert read_traces(tmp_path / "rs")["completion"].to_pylist() == ["1+1=2\n2+1=3\n3+1=4\nA:4"]
    assert (c["revisions"], c["revised_traces"]) == (2, 1)
    assert c["tokens_after"] < c["tokens_before"]
    script = Scripted(tok, replies)
    monkeypatch.setattr(shorten, "Reviser", lambda *a, **k: script)
    c = shorten.retro_search(str(src), str(tmp_path / "rsp"), partial=True)["retro_counts"]
    assert read_traces(tmp_path / "rsp")["completion"].to_pylist() == [
        "1+1=2\n2+1=3\n3+1=4\ncheck 3+1=4\nA:4"]
    assert c["revisions"] == 1


def test_truncate_like_cuts_to_the_other_sets_lengths(tmp_path, tok):
    src, like = tmp_path / "src", tmp_path / "like"
    long = "1+1=2\n2+1=3 wait, 2+1=3\ncheck 1+1=2\nA:3"
    _trace_set(src, [{"prompt": "Q:1+1+1\n", "completion": long, "reference": "3"},
                     {"prompt": "Q:2+1\n", "completion": "2+1=3\nA:3", "reference": "3"}], "preset:nano", tok=tok)
    _trace_set(like, [{"prompt": "Q:1+1+1\n", "completion": "1+1=2\n2+1=3\nA:3", "reference": "3"}],
               "preset:nano", tok=tok)
    stats = shorten.truncate_like(str(src), str(tmp_path / "cut"), str(like))
    assert read_traces(tmp_path / "cut")["completion"].to_pylist() == ["1+1=2\nA:3"]  # p1 is not in `like`
    assert stats["truncate_counts"]["cut"] == 1


# ---- a real model, through the CLI ----

def test_cli_rewrite_and_retro_search_with_a_real_teacher_resume_and_refuse_bad_input(tmp_path, tok, capsys):
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=1)
    teacher = tmp_path / "teacher"
    save_model(model, tok, teacher)
    src = tmp_path / "src"
    trace = "7+5=2\n2*3=6 wait, 2*3=6\n6-4=2\ncheck 7+5=2 2*3=6 6-4=2\nA:2"
    _trace_set(src, [{"prompt": f"Q:7+5*3-{i}\n", "completion": trace, "reference": "2"} for i in range(6)],
               str(teacher), tok=tok, weights=weights_sha256(model))
    assert main(["curate", str(src), "--out", str(tmp_path / "rs"), "--retro-search", "--max-prompts", "4"]) == 0
    m = read_manifest(tmp_path / "rs")
    assert m["retro_counts"]["traces"] == 4 and m["retro_counts"]["switches"] >= 4
    assert m["params"]["retro_search"]["keywords"] == ["wait", "check"]  # the task's own
    rows = read_traces(tmp_path / "rs").to_pylist()
    assert len(rows) == 4 and all(len(r["completion_logprobs"]) == r["n_tokens"] for r in rows)  # re-scored
    assert main(["curate", str(src), "--out", str(tmp_path / "rs"), "--retro-search", "--max-prompts", "4"]) == 0
    assert read_manifest(tmp_path / "rs")["retro_counts"] == m["retro_counts"]  # a rerun: nothing again
    tpl = tmp_path / "t.txt"
    tpl.write_text("R {easy} {medium} {hard}\n{question}{trace}\n")  # the nano context holds no long prompt
    assert main(["curate", str(src), "--out", str(tmp_path / "dap"), "--rewrite", "dap",
                 "--budgets", "easy=10,medium=20,hard=30", "--rewrite-template", str(tpl)]) == 0
    c = read_manifest(tmp_path / "dap")["rewrite_counts"]
    assert c["traces"] == 6 and c["kept"] + sum(c["rejected"].values()) == 6
    # bad input: one message, non-zero, nothing written
    for args, word in [(["--rewrite", "uniform"], "--budget"), (["--rewrite", "dap", "--budget", "5"], "--budget"),
                       (["--rewrite", "dap", "--budgets", "easy=1"], "medium"),
                       (["--rewrite", "dap", "--retro-search"], "one per curate step"),
                       (["--retro-search", "--correct"], "separate curate step")]:
        out = tmp_path / "bad"
        assert main(["curate", str(src), "--out", str(out), *args]) == 2, args
        assert word in capsys.readouterr().err
        assert not out.exists()
    tpl.write_text("{question}{trace}")
    assert main(["curate", str(src), "--out", str(tmp_path / "bad"), "--rewrite", "dap", "--rewrite-template",
                 str(tpl)]) == 2
    assert "{easy}" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # another model as reviser must share the set's tokenizer; a changed teacher is refused
    torch.nn.init.zeros_(model.lm_head.weight)
    save_model(model, tok, teacher)
    assert main(["curate", str(src), "--out", str(tmp_path / "x"), "--retro-search"]) == 2
    assert "weights hash differs" in capsys.readouterr().err
    assert json.loads((src / "manifest.json").read_text())["params"]["task"]["name"] == "detours"


def test_a_local_reviser_never_opens_its_next_step_with_a_banned_keyword(tmp_path, tok):
    import string

    model, tok = load_model(ModelConfig(name="preset:nano"), seed=2)
    save_model(model, tok, tmp_path / "teacher")
    _trace_set(tmp_path / "src", [{"prompt": "Q:1+1\n", "completion": "1+1=2\nA:2", "reference": "2"}],
               str(tmp_path / "teacher"), tok=tok)
    rv = shorten.Reviser(str(tmp_path / "src"), read_manifest(tmp_path / "src"))
    ban = tuple(c for c in string.printable if not c.isspace() and c != "7")  # every opening but "7"
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=1.0, seed=0, batch_size=64)
    free = rv.continue_(["Q:1+1\n"] * 16, ["1+1=2"] * 16, n=4, **kw)
    banned = rv.continue_(["Q:1+1\n"] * 16, ["1+1=2"] * 16, n=4, ban=ban, **kw)
    opening = lambda c: c.text.lstrip()[:1]  # noqa: E731
    assert {opening(c) for o in free for c in o} - {"", "7"}  # a random model opens with anything
    assert {opening(c) for o in banned for c in o} <= {"", "7"}
    assert any(c.text.lstrip()[1:] for o in banned for c in o)  # after the opening, no ban


def test_detours_teacher_skills_write_the_longest_rendering_within_the_budget():
    t = get_task(TaskConfig(name="detours"))
    r = t.renderings(7, [(7, "+", 5, 2), (2, "*", 3, 6), (6, "-", 4, 2)])
    assert t.renderings_for("Q:7+5*3-4\n") == r  # the rule the benchmark reads from a prompt
    assert r == ["7+5=2\n2*3=6\n6-4=2\ncheck 7+5=2 2*3=6 6-4=2\nA:2", "7+5=2\n2*3=6\n6-4=2\nA:2",
                 "7+5*3=6\n6-4=2\nA:2", "7+5*3-4=2\nA:2", "A:2"]
    assert t.fitting(r, 21) == "7+5=2\n2*3=6\n6-4=2\nA:2" and t.fitting(r, 20) == "7+5*3=6\n6-4=2\nA:2"
    assert t.fitting(r, 2) == "A:2"
    assert [t.level(s) for s in (1, 2, 3, 4, 5, 12)] == ["easy", "easy", "medium", "medium", "hard", "hard"]
    ex = t.skill_examples(40, seed=1)
    assert len(ex) == 40 and ex[0].prompt.startswith("R:dap ") and ex[1].prompt.startswith("R:u")
    for e in ex:
        level, text = shorten.parse_rewrite(e.solution, "dap" if e.prompt.startswith("R:dap") else "uniform")
        assert t.verify(text, e.answer) and (level == t.level(e.difficulty)) == e.prompt.startswith("R:dap")
    assert not any(e.prompt in {x.prompt for x in t.skill_examples(40, seed=1, split="test")} for e in ex)


def test_the_detours_teacher_learns_its_skills_beside_its_solutions(tmp_path):
    from conftest import tiny_overrides

    from retort.config import load_config

    from retort.lm.config import TrainRun
    from retort.lm.teacher import teacher_config
    from retort.train import train

    run = teacher_config(overrides=["task.name=detours"])
    assert (run.data.skills, run.data.max_len, run.train.stop_at_accuracy, run.eval.max_new_tokens) == \
        (0.5, 320, 0.0, 192)
    plain = teacher_config(overrides=["task.name=modchain"])
    assert (plain.data.skills, plain.data.max_len, plain.train.stop_at_accuracy) == (0.0, 160, 0.98)
    ok = load_config(TrainRun, None, tiny_overrides(tmp_path / "d", steps=2, **{"task.name": "detours",
                                                                               "data.skills": 0.5,
                                                                               "data.max_len": 320}))
    assert train(ok)["steps"] == 2
    bad = load_config(TrainRun, None, tiny_overrides(tmp_path / "m", steps=2, **{"data.skills": 0.5}))
    with pytest.raises(DataError, match="no skill examples"):
        train(bad)


def test_dap_on_chain_sums_detours_rendering_keeps_the_rewrites_its_teacher_learns(tmp_path, tok, monkeypatch):
    pytest.importorskip("reasoning_gym")
    spec = {"name": "rg:chain_sum", "difficulty": {"rendering": "detours", "max_digits": 1, "max_terms": 5}}
    task = get_task(TaskConfig(**spec))
    examples = [e for e in task.examples("train", 40, 0) if " wait, " in e.solution][:6]
    rows = [{"prompt": e.prompt, "completion": e.solution, "reference": e.answer, "difficulty": e.difficulty}
            for e in examples]
    _trace_set(tmp_path / "src", rows, "preset:nano", task=spec, tok=tok)
    budgets = {"easy": 21, "medium": 31, "hard": 41}
    tpl = task.rewrite_templates["dap"]
    # the teacher's learned rule (its skill targets): the level, then the longest rendering in budget
    replies = {}
    for e in examples:
        level = task.level(e.difficulty)
        replies[tpl.format(question=e.prompt, trace=e.solution, **budgets)] = \
            f"D:{level}\n" + task.fitting(task.renderings_for(e.prompt), budgets[level])
    monkeypatch.setattr(shorten, "Reviser", lambda *a, **k: Scripted(tok, replies))
    c = shorten.rewrite(str(tmp_path / "src"), str(tmp_path / "dap"), budgets=budgets, template=tpl)["rewrite_counts"]
    assert (c["kept"], c["rejected"], c["over_budget"]) == (len(rows), {}, 0)  # reasoning-gym's checker agrees
    out = read_traces(tmp_path / "dap").to_pylist()
    assert all(" wait, " not in r["completion"] and r["correct"] for r in out)
    assert c["tokens_after"] < c["tokens_before"]
    assert task.transitions == ("wait", "check")  # what --retro-search switches at on this set

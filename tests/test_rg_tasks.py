"""reasoning-gym's generators as tasks (`task.name=rg:NAME`): examples, splits, the library's own
checker, options, and a traces run on one."""

import pytest

from retort.config import load_config

from retort.lm.config import TaskConfig, TracesRun
from retort.errors import ConfigError
from retort.lm.data.traces import read_traces
from retort.lm.tasks import get_task

pytest.importorskip("reasoning_gym")


def task(name="rg:chain_sum", answer=None, **difficulty):
    return get_task(TaskConfig(name=name, difficulty=difficulty, answer=answer))


def test_examples_are_seeded_disjoint_and_carry_worked_solutions():
    t = task(max_terms=4, max_digits=2)
    a, b = t.examples("train", 40, 0), t.examples("train", 40, 0)
    assert [e.prompt for e in a] == [e.prompt for e in b]  # seeded
    assert [e.prompt for e in t.examples("train", 40, 1)] != [e.prompt for e in a]
    assert [e.prompt for e in t.examples("train", 10, 0)] == [e.prompt for e in a[:10]]  # n does not reshuffle
    test = t.examples("test", 30, 0)
    assert not {e.prompt for e in test} & {e.prompt for e in t.examples("train", 300, 0)}
    for e in a:
        # the worked solution is the expression left to right, and the library's checker accepts it
        assert e.solution.endswith(f"\n<answer>{e.answer}</answer>") and t.verify(e.solution, e.answer, e.prompt)
        assert 2 <= e.difficulty <= 4
        nums = e.prompt.split("problem:")[1].split("=")[0].split()
        assert str(eval(" ".join(nums))) == e.answer  # noqa: S307 (digits and +/- only, made here)
    # in retort's own format (task.answer=marker), the solution ends with the marker line instead
    m = task(answer="marker", max_terms=4, max_digits=2).examples("train", 40, 0)
    assert [x.solution.rsplit("\n", 1)[0] for x in m] == [x.solution.rsplit("\n", 1)[0] for x in a]
    assert all(x.solution.endswith(f"\nA:{x.answer}") for x in m)


def test_reasoning_gyms_own_prompt_and_answer_tags_by_default():
    from reasoning_gym.utils import SYSTEM_PROMPTS

    t = task()
    e = t.examples("train", 1, 0)[0]
    assert e.prompt.startswith("State the final answer") and e.prompt.system == SYSTEM_PROMPTS["default"]
    assert t.verify(f"Let me add.\n<answer>{e.answer}</answer>", e.answer, e.prompt)
    assert t.extract_answer(f"<answer> {e.answer} </answer> and <answer>x</answer>") == "x"  # the last tag
    assert not t.verify(f"<answer>{int(e.answer) + 1}</answer>", e.answer, e.prompt)


def test_the_generators_own_checker_scores_the_answer_after_the_marker():
    t = task(answer="marker")
    e = t.examples("train", 1, 0)[0]
    assert e.prompt.startswith("Answer on a last line A:<answer>.\n") and getattr(e.prompt, "system", None) is None
    assert t.verify(f"thinking...\nA:{e.answer}", e.answer)
    assert not t.verify(f"A:{int(e.answer) + 1}", e.answer)
    assert not t.verify(e.answer, e.answer)  # no marker, no answer
    assert t.reward(f"A:{e.answer}", e.answer) == 1.0


def test_a_generator_without_a_solver_has_answers_only():
    t = task("rg:leg_counting")
    e = t.examples("train", 3, 0)[0]
    assert e.solution is None and isinstance(e.difficulty, int)
    assert t.verify(f"<answer>{e.answer}</answer>", e.answer)


def test_options_and_names_are_checked():
    with pytest.raises(ConfigError, match=r"task.difficulty.max_term: not an option of reasoning-gym's chain_sum; "
                                          r"valid: .*max_terms"):
        task(max_term=3)
    with pytest.raises(ConfigError, match="reasoning-gym has no generator 'chain_summ'.*close: chain_sum"):
        task("rg:chain_summ")
    with pytest.raises(ConfigError, match="task.difficulty for rg:chain_sum"):
        task(min_terms=5, max_terms=2)


def test_traces_of_a_reasoning_gym_task(tmp_path):
    from retort.lm.traces import run_traces

    out = tmp_path / "tr"
    run_traces(load_config(TracesRun, None, [f"out={out}", "teacher.name=preset:nano", "task.name=rg:chain_sum",
                                             "task.difficulty.max_digits=1", "n_prompts=6", "sampling.n=2",
                                             # reasoning-gym's system prompt is longer than nano's context
                                             "task.system=Answer in <answer> tags.",
                                             "sampling.max_new_tokens=8", "shard_prompts=3"]))
    rows = read_traces(out).to_pylist()
    assert len(rows) == 12 and all(r["prompt"].startswith("State the final answer") for r in rows)
    from reasoning_gym.utils import SYSTEM_PROMPTS

    from retort.lm.data.traces import read_manifest

    fmt = read_manifest(out)["params"]["prompt_format"]  # what the student will be prompted with
    assert fmt == {"answer": "tag", "strict": False, "system": "Answer in <answer> tags.", "template": "{question}"}
    assert get_task(TaskConfig(name="rg:chain_sum")).prompt_format()["system"] == SYSTEM_PROMPTS["default"]
    assert all(r["correct"] is False or r["answer"] == r["reference"] for r in rows)


# ---------------------------------------------------------------- a generator with few problems

# chain_sum with two one-digit terms: a+b and a-b for a, b in 0..9, 200 problems in all
SMALL = {"max_terms": 2, "max_digits": 1}
SMALL_QUESTIONS = {f"State the final answer to the following arithmetic problem: {a} {op} {b} ="
                   for a in range(10) for b in range(10) for op in "+-"}


@pytest.fixture
def draws(monkeypatch):
    """Every problem drawn from a generator's stream, counted; more than 50,000 stops the test
    (the search that enlarged the stream six times drew 2.7 million for eval.n=100)."""
    from retort.lm.tasks.rg import ReasoningGymTask

    drawn: list = []
    real = ReasoningGymTask._dataset

    class Counting:
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            drawn.append(i)
            assert len(drawn) <= 50_000, "the search went on long after the generator ran dry"
            return self.ds[i]

        def __getattr__(self, name):
            return getattr(self.ds, name)

    monkeypatch.setattr(ReasoningGymTask, "_dataset", lambda self, seed, size: Counting(real(self, seed, size)))
    return drawn


@pytest.mark.parametrize("split, n", [("test", 100), ("train", 50_000)])
def test_a_generator_with_fewer_problems_than_asked_stops_early_and_says_how_many(draws, split, n):
    from retort.lm.tasks import require_examples
    from retort.lm.tasks.base import in_test_split

    t = task(**SMALL)
    exist = {q for q in SMALL_QUESTIONS if in_test_split(q) == (split == "test")}
    assert 0 < len(exist) < n
    got = require_examples(t, split, n, "eval", seed=3)
    assert got == len(exist) == t.size(split)
    ex = t.examples(split, n, 3)
    assert {e.prompt for e in ex} == exist  # every one of them, each once
    assert len(draws) < 50 * len(SMALL_QUESTIONS)  # stopped soon after the last new problem
    said = t.describe_split(split)
    assert f"which holds {len(exist)} distinct problems" in said and "allow 200 in all" in said
    assert t.size("test" if split == "train" else "train") is None  # the other split was not searched


def test_eval_of_a_small_generator_says_how_many_problems_there_are(tmp_path, capsys, draws, monkeypatch):
    import json

    from retort.cli import main
    from retort.lm.tasks.base import in_test_split

    monkeypatch.setenv("COLUMNS", "1000")
    n_test = sum(in_test_split(q) for q in SMALL_QUESTIONS)
    out = tmp_path / "e.json"
    rc = main(["eval", "task.name=rg:chain_sum", "task.difficulty.max_terms=2", "task.difficulty.max_digits=1",
               "model.name=preset:nano", "eval.n=100", "eval.max_new_tokens=4", "--json", str(out)])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 0, err
    assert f"eval: {n_test} prompts from the test split of rg:chain_sum (max_terms=2, max_digits=1), which holds " \
           f"{n_test} distinct problems" in err
    assert "eval.n=100 asks for more than there are" in err
    assert json.loads(out.read_text())["preset:nano"]["n"] == n_test


def test_traces_of_a_small_generator_sample_each_problem_once(tmp_path, capsys, draws):
    from rich.console import Console

    from retort.lm.tasks.base import in_test_split
    from retort.lm.traces import run_traces

    n_test = sum(in_test_split(q) for q in SMALL_QUESTIONS)
    out = tmp_path / "tr"
    run_traces(load_config(TracesRun, None, [f"out={out}", "teacher.name=preset:nano", "task.name=rg:chain_sum",
                                             "task.difficulty.max_terms=2", "task.difficulty.max_digits=1",
                                             "split=test", "n_prompts=40", "sampling.n=1",
                                             "sampling.max_new_tokens=4"]),
               Console(stderr=True, width=1000))
    err = " ".join(capsys.readouterr().err.split())
    assert f"which holds {n_test} distinct problems" in err and "(n_prompts=40 asks for more)" in err
    assert len({r["prompt"] for r in read_traces(out).to_pylist()}) == n_test


def test_a_generator_that_refuses_a_long_stream_says_so():
    # word_ladder refuses datasets of more than 20,000 problems
    with pytest.raises(ConfigError, match=r"task.name=rg:word_ladder: reasoning-gym's word_ladder refuses a stream "
                                          r"of 100000 problems \(Dataset size too large.*\); ask for fewer"):
        task("rg:word_ladder").examples("test", 5000, 0)


DETOURS = {"max_digits": 1, "max_terms": 5, "rendering": "detours"}


def _step_ok(line: str) -> bool:
    left, result = line.split("=")
    return str(eval(left)) == result  # noqa: S307 (digits and +/- only, made here)


def test_the_detours_rendering_corrects_wrong_steps_after_wait_and_scores_by_the_generators_checker():
    t = task(**DETOURS)
    plain = task(answer="marker", max_digits=1, max_terms=5)
    detoured = doubted = 0
    for e, p in zip(t.examples("train", 200, 0), plain.examples("train", 200, 0)):
        assert (e.prompt, e.answer, e.difficulty) == (p.prompt, p.answer, p.difficulty)  # only the solution differs
        # reasoning-gym's own score_answer accepts the final answer
        assert t.extract_answer(e.solution) == e.answer and t.score(e.solution, e.answer) == 1.0
        *lines, check, last = e.solution.split("\n")
        clean = p.solution.split("\n")[:-1]
        assert last == f"A:{e.answer}" and check == "check " + " ".join(clean)
        for line, right in zip(lines, clean, strict=True):
            first, _, fixed = line.partition(" wait, ")
            if fixed:  # a detour (a wrong result, then the right one) or a doubt (the right one twice)
                assert fixed == right and _step_ok(right)
                detoured += not _step_ok(first)
                doubted += first == right
                assert first.split("=")[0] == right.split("=")[0]
            else:
                assert line == right
    assert detoured > 50 and doubted > 10  # 30% and 20% of ~600 steps
    # no detours, doubts nor re-check: the default rendering, byte for byte
    bare = task(**DETOURS, detour_pct=0, doubt_pct=0, recheck=0)
    assert [e.solution for e in bare.examples("train", 20, 0)] == [e.solution for e in plain.examples("train", 20, 0)]
    assert t.transitions == ("wait", "check") and set(t.rewrite_templates) == {"dap", "uniform"}
    assert plain.transitions == () and plain.rewrite_templates == {} and plain.skill_examples(4) == []


def test_the_detours_teachers_rewrite_skills_write_valid_shorter_traces():
    from retort.lm.curate.trace_text import parse_rewrite

    t = task(**DETOURS)
    ex = t.skill_examples(60, seed=1)
    assert len(ex) == 60 and ex[0].prompt.startswith("R:dap ") and ex[1].prompt.startswith("R:u")
    assert [t.level(n) for n in (2, 3, 4, 5, 6)] == ["easy", "easy", "medium", "hard", "hard"]
    shorter = 0
    for e in ex:
        mode = "dap" if e.prompt.startswith("R:dap") else "uniform"
        level, text = parse_rewrite(e.solution, mode)
        head, rest = e.prompt.split("\n", 1)
        question = rest[:rest.index("problem:")] + rest[rest.index("problem:"):].split("\n", 1)[0] + "\n"
        trace = rest[len(question):].removesuffix("\n=\n")
        assert " wait, " not in text and t.score(text, e.answer) == 1.0 and t.score(trace, e.answer) == 1.0
        steps = [s for line in text.split("\n")[:-1] for s in line.removeprefix("check ").split()]
        assert len(text) <= len(trace) and all(_step_ok(s) for s in steps)  # never longer
        assert text in t.renderings_for(question)
        if mode == "dap":
            assert level == t.level(e.difficulty)
            budget = int(head.split()[1 + ("easy", "medium", "hard").index(level)][1:])
        else:
            budget = int(head[3:])
        assert len(text) <= budget or text == f"A:{e.answer}"  # the answer alone when nothing fits
        shorter += len(text) < len(trace) // 2
    assert shorter > 10
    # the skills of the test split are made of test problems
    assert not {e.prompt for e in ex} & {e.prompt for e in t.skill_examples(60, seed=1, split="test")}
    r = t.renderings_for("Answer on a last line A:<answer>.\nState the final answer to the following arithmetic "
                         "problem: 4 - 1 - 7 + 2 =\n")
    assert r == ["4-1=3\n3-7=-4\n-4+2=-2\ncheck 4-1=3 3-7=-4 -4+2=-2\nA:-2", "4-1=3\n3-7=-4\n-4+2=-2\nA:-2",
                 "4-1-7=-4\n-4+2=-2\nA:-2", "4-1-7+2=-2\nA:-2", "A:-2"]
    assert t.fitting(r, 22) == "4-1-7=-4\n-4+2=-2\nA:-2" and t.fitting(r, 2) == "A:-2"


def test_the_detours_rendering_options_are_checked():
    with pytest.raises(ConfigError, match=r"task.difficulty.rendering='loops': expected one of steps, detours"):
        task(rendering="loops")
    with pytest.raises(ConfigError, match=r"rendering='detours': expected one of steps for rg:leg_counting"):
        task("rg:leg_counting", rendering="detours")
    with pytest.raises(ConfigError, match=r"task.difficulty.detour_pct: an option of the detours rendering; "
                                          r"add task.difficulty.rendering=detours"):
        task(detour_pct=10)
    with pytest.raises(ConfigError, match=r"task.difficulty.doubt_pct=101: expected an integer in \[0, 100\]"):
        task(rendering="detours", doubt_pct=101)
    with pytest.raises(ConfigError, match=r"valid: .*max_terms.*; retort's: rendering, detour_pct"):
        task(max_term=3)
    # its solutions and skills end on an A: line: retort's answer format, by default and only
    assert task(rendering="detours").answer_mode == "marker"
    with pytest.raises(ConfigError, match=r"task.answer=tag: task.difficulty.rendering=detours .* use task.answer=marker"):
        task(rendering="detours", answer="tag")


def test_the_detours_teacher_learns_its_skills_beside_its_solutions(tmp_path):
    from conftest import tiny_overrides

    from retort.lm.config import TrainRun
    from retort.lm.teacher import teacher_config
    from retort.train import train

    run = teacher_config(overrides=["task.name=rg:chain_sum", "task.difficulty.rendering=detours"])
    assert (run.data.skills, run.data.max_len, run.eval.max_new_tokens) == (0.5, 320, 192)
    assert teacher_config(overrides=["task.name=rg:chain_sum"]).data.skills == 0.0
    ok = load_config(TrainRun, None, tiny_overrides(tmp_path / "d", steps=2, **{
        "task.name": "rg:chain_sum", "task.difficulty.rendering": "detours", "task.difficulty.max_digits": 1,
        "data.skills": 0.5, "data.max_len": 320}))
    assert train(ok)["steps"] == 2


def test_tasks_command_shows_a_generators_options_defaults_and_convention(capsys):
    from retort.cli import main

    assert main(["tasks", "rg:basic_arithmetic", "--n", "1"]) == 0
    out = capsys.readouterr().out
    # the config dataclass's fields with their defaults (read from reasoning-gym, not a copy)
    from reasoning_gym.arithmetic.basic_arithmetic import BasicArithmeticDatasetConfig as C

    assert f"max_terms = {C().max_terms!r}" in out and f"operators = {C().operators!r}" in out
    assert "seed =" not in out and "size =" not in out  # retort's, set per split
    assert "<answer>" in out and "task.answer=tag" in out  # the prompt/answer convention
    assert "'num_terms'" in out and "example:" in out
    assert main(["tasks", "rg:basic_arith"]) == 2
    assert "close: basic_arithmetic" in capsys.readouterr().err
    assert main(["tasks", "modchain", "--n", "1"]) == 0
    assert "task.difficulty." in capsys.readouterr().out

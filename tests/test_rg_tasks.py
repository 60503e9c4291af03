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

"""reasoning-gym's generators as tasks (`task.name=rg:NAME`): examples, splits, the library's own
checker, options, and a traces run on one."""

import pytest

from retort.config import load_config

from retort.lm.config import TaskConfig, TracesRun
from retort.errors import ConfigError
from retort.lm.data.traces import read_traces
from retort.lm.tasks import get_task

pytest.importorskip("reasoning_gym")


def task(name="rg:chain_sum", **difficulty):
    return get_task(TaskConfig(name=name, difficulty=difficulty))


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
        assert e.solution.endswith(f"A:{e.answer}") and t.verify(e.solution, e.answer)
        assert 2 <= e.difficulty <= 4
        nums = e.prompt.split("problem:")[1].split("=")[0].split()
        assert str(eval(" ".join(nums))) == e.answer  # noqa: S307 (digits and +/- only, made here)


def test_the_generators_own_checker_scores_the_answer_after_the_marker():
    t = task()
    e = t.examples("train", 1, 0)[0]
    assert t.verify(f"thinking...\nA:{e.answer}", e.answer)
    assert not t.verify(f"A:{int(e.answer) + 1}", e.answer)
    assert not t.verify(e.answer, e.answer)  # no marker, no answer
    assert t.reward(f"A:{e.answer}", e.answer) == 1.0


def test_a_generator_without_a_solver_has_answers_only():
    t = task("rg:leg_counting")
    e = t.examples("train", 3, 0)[0]
    assert e.solution is None and isinstance(e.difficulty, int)
    assert t.verify(f"A:{e.answer}", e.answer)


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
                                             "sampling.max_new_tokens=8", "shard_prompts=3"]))
    rows = read_traces(out).to_pylist()
    assert len(rows) == 12 and all(r["prompt"].startswith("Answer on a last line A:") for r in rows)
    assert all(r["correct"] is False or r["answer"] == r["reference"] for r in rows)

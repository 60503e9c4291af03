import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retort.lm.config import TaskConfig
from retort.errors import ConfigError, DataError
from retort.lm.tasks import TASKS, FileTask, get_task
from retort.lm.tasks.builtin import OPS


@pytest.mark.parametrize("name", list(TASKS))
def test_builtin_tasks_are_deterministic_and_splits_disjoint(name):
    task = TASKS[name]()
    a, b = task.examples("train", 300, seed=1), task.examples("train", 300, seed=1)
    assert a == b
    assert task.examples("train", 300, seed=2) != a
    assert task.examples("train", 50, seed=1) == a[:50]  # n does not change the first examples
    test = task.examples("test", 300, seed=1)
    assert len({e.prompt for e in test}) == len(test)
    assert not {e.prompt for e in task.examples("train", 3000, seed=5)} & {e.prompt for e in test}


# a task answered by programs (progs) is checked by running them: tests/test_programs.py; one answered
# by an agent (calc): tests/test_agent.py
@pytest.mark.parametrize("name", [n for n in TASKS if getattr(TASKS[n], "program", None) is None
                                  and getattr(TASKS[n], "agent", None) is None])
def test_worked_solutions_verify_and_answers_do_not_leak(name):
    task = TASKS[name]()
    for ex in task.examples("train", 200, 0):
        assert task.verify(ex.solution, ex.answer)
        assert task.verify(ex.answer_completion, ex.answer)
        assert task.extract_answer(ex.solution) == ex.answer
        # one line per operation (+ the start value for vars, + the re-check for detours), then the answer line
        assert ex.solution.count("\n") == ex.difficulty + {"modchain": 0, "vars": 1, "detours": 1}[name]
        wrong = str((int(ex.answer) + 1) % 10)
        assert not task.verify(f"A:{wrong}", ex.answer)
    assert task.extract_answer("no answer here") is None


def test_modchain_solution_is_correct_arithmetic():
    task = TASKS["modchain"](steps_min=3, steps_max=3, modulus=7)
    for ex in task.examples("test", 50, 0):
        body = ex.prompt[2:].strip()
        value, rest = int(body[0]), body[1:]
        for i in range(0, len(rest), 2):
            value = OPS[rest[i]](value, int(rest[i + 1])) % 7
        assert str(value) == ex.answer
        assert all(int(c) < 7 for c in body if c.isdigit())


def test_vars_prompt_is_shuffled_and_resolvable():
    task = TASKS["vars"](steps_min=4, steps_max=4)
    exs = task.examples("train", 100, 0)
    orders_differ = 0
    for ex in exs:
        defs = dict(d.split("=") for d in ex.prompt[2:].split(";")[0].split(","))
        query = ex.prompt.split(";")[1].strip().rstrip("?")
        env = {}
        while len(env) < len(defs):
            for k, v in defs.items():
                if k in env:
                    continue
                if v.isdigit():
                    env[k] = int(v)
                elif v[0] in env:
                    env[k] = OPS[v[1]](env[v[0]], int(v[2:])) % 10
        assert str(env[query]) == ex.answer
        orders_differ += list(defs)[0] != ex.solution.split("=")[0]
    assert orders_differ > 20


def test_difficulty_knobs_are_checked():
    with pytest.raises(ConfigError, match="unknown knob.*valid: steps_min, steps_max, modulus"):
        get_task(TaskConfig(name="modchain", difficulty={"depth": 3}))
    with pytest.raises(ConfigError, match=r"modulus=11.*\[2, 10\]"):
        get_task(TaskConfig(name="modchain", difficulty={"modulus": 11}))
    with pytest.raises(ConfigError, match="steps_min=5 > steps_max=3"):
        get_task(TaskConfig(name="vars", difficulty={"steps_min": 5, "steps_max": 3}))
    with pytest.raises(ConfigError, match="not a built-in task"):
        get_task(TaskConfig(name="nope"))


def _rows(n=40):
    return [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i), "solution": f"{i}+{i}={2*i}\nA:{2*i}",
             "id": f"q{i}"} for i in range(n)]


def test_jsonl_and_parquet_tasks(tmp_path):
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in _rows()) + "\n")
    pqf = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(_rows()), pqf)
    for path in (jl, pqf):
        task = get_task(TaskConfig(name=str(path), verifier="numeric", test_fraction=0.25))
        train, test = task.examples("train", 1000, 0), task.examples("test", 1000, 0)
        assert len(train) == 1000 and 0 < len(test) < 40
        assert not {e.prompt for e in train} & {e.prompt for e in test}
        ex = test[0]
        assert task.verify(ex.solution, ex.answer)
        assert task.verify(f"so the answer is {ex.answer}.", ex.answer)


@pytest.mark.parametrize("line, expect", [
    ('{"prompt": "x"}', r"t.jsonl:3: missing required field 'answer'"),
    ('{"prompt": "", "answer": "1"}', r"t.jsonl:3: field 'prompt' must be a non-empty string"),
    ('{"prompt": "x", "answer": "1", "solution": 5}', r"t.jsonl:3: field 'solution' must be a string"),
    ('{"prompt": "x", "answer": 1', r"t.jsonl:3: not valid JSON"),
    ('[1, 2]', r"t.jsonl:3: expected an object"),
])
def test_bad_jsonl_row_names_file_line_field(tmp_path, line, expect):
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": 2}\n' + line + "\n")
    with pytest.raises(DataError, match=expect):
        FileTask(str(f))


def test_bad_parquet_names_column_and_row(tmp_path):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}]), f)
    with pytest.raises(DataError, match="missing required column.*answer"):
        FileTask(str(f))
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": None}]), f)
    with pytest.raises(DataError, match=r"t.parquet: row 2: missing required field 'answer'"):
        FileTask(str(f))
    g = tmp_path / "junk.parquet"
    g.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        FileTask(str(g))


def test_detours_solutions_wander_then_correct_themselves():
    import re

    from retort.lm.config import TaskConfig
    from retort.lm.tasks import get_task

    t = get_task(TaskConfig(name="detours", difficulty={"detour_pct": 100, "recheck": 1}))
    for e in t.examples("train", 20, 0):
        lines = e.solution.split("\n")
        steps = lines[:-2]
        assert all(" wait, " in line for line in steps) and lines[-2].startswith("check ")
        for line in steps:  # the detour is wrong, its correction right (mod 10)
            wrong, right = line.split(" wait, ")
            a, op, x, got = re.fullmatch(r"(\d+)([-+*])(\d+)=(\d+)", wrong).groups()
            want = eval(f"{a}{op}{x}") % 10  # noqa: S307 (digits and one operator, made here)
            assert int(got) != want and right == f"{a}{op}{x}={want}"
        assert lines[-2] == "check " + " ".join(line.split(" wait, ")[1] for line in steps)
        assert t.verify(e.solution, e.answer) and lines[-1] == f"A:{e.answer}"
    doubts = get_task(TaskConfig(name="detours", difficulty={"detour_pct": 0, "doubt_pct": 100, "recheck": 0}))
    for e in doubts.examples("train", 20, 0):  # every right step doubted and written again
        steps = e.solution.split("\n")[:-1]
        assert all(a == b for a, b in (line.split(" wait, ") for line in steps))
    plain = get_task(TaskConfig(name="detours", difficulty={"detour_pct": 0, "doubt_pct": 0, "recheck": 0}))
    for e in plain.examples("train", 20, 0):  # no detour: modchain's worked solution
        assert "wait" not in e.solution and "check" not in e.solution and plain.verify(e.solution, e.answer)
    with pytest.raises(ConfigError, match="detour_pct"):
        get_task(TaskConfig(name="detours", difficulty={"detour_pct": 101}))


def test_modchain_per_line_writes_terse_solutions_of_the_same_problems():
    from retort.lm.config import TaskConfig
    from retort.lm.tasks import get_task

    one = get_task(TaskConfig(name="modchain")).examples("train", 30, 0)
    two = get_task(TaskConfig(name="modchain", difficulty={"per_line": 2})).examples("train", 30, 0)
    for a, b in zip(one, two):
        assert a.prompt == b.prompt and a.answer == b.answer
        lines = b.solution.split("\n")
        assert len(lines) - 1 == -(-a.difficulty // 2) and lines[-1] == f"A:{a.answer}"
        # each terse line is two of the worked lines: the first's left side, both operators, the second's result
        steps = a.solution.split("\n")[:-1]
        for k, line in enumerate(lines[:-1]):
            pair = steps[2 * k:2 * k + 2]
            assert line.split("=")[1] == pair[-1].split("=")[1]
            assert line.split("=")[0] == pair[0].split("=")[0] + "".join(p.split("=")[0][1:] for p in pair[1:])
    with pytest.raises(ConfigError, match="per_line"):
        get_task(TaskConfig(name="detours", difficulty={"per_line": 2}))

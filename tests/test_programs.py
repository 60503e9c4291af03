"""Program distillation (`retort traces program=python`, `retort eval program=python`, task progs):
programs are run in the real sandbox and checked by their output; a scripted teacher (known
programs per question and try) checks resampling and dynamic exemplars; the toy runs through the CLI."""

import json
import shutil

import pytest

from retort.cli import main
from retort.config import load_config
from retort.lm.config import TaskConfig, TrainRun
from retort.lm.data.traces import read_manifest, read_traces
from retort.lm.models.presets import char_tokenizer
from retort.lm.rollout.generate import Completion
from retort.lm.tasks import get_task
from retort.lm.tasks.programs import ProgramTask, extract_program
from retort.lm.traces_programs import Exemplars, pal_prompt
from retort.lm.track import LMTrack
from retort.sandbox import SandboxError, check

if shutil.which("bwrap") is None:
    pytest.skip("bubblewrap (bwrap) is not installed: programs cannot run here (.ci/run installs it)",
                allow_module_level=True)
try:
    check()
except SandboxError as e:
    pytest.skip(f"the sandbox cannot start on this machine: {e}", allow_module_level=True)


def test_extract_program():
    assert extract_program("Here:\n```python\nprint(1)\n```\nDone") == "print(1)"
    assert extract_program("x=2\nprint(x)\n```\nQuestion: next") == "x=2\nprint(x)"  # a PAL prompt opened it
    assert extract_program("x=1\nprint(x)") == "x=1\nprint(x)"


def test_progs_task_checks_by_running():
    task = get_task(TaskConfig(name="progs"))
    assert task.program == "python"
    ex = task.examples("test", 3)
    for e in ex:
        assert e.solution.endswith("print(x)") and "A:" not in e.solution
        assert task.verify(e.solution, e.answer, e.prompt)
        # the answer printed without computing it counts too; a wrong one, a crash or a loop does not
        assert task.verify(f"print({e.answer})", e.answer, e.prompt)
        assert not task.verify(f"print({(int(e.answer) + 1) % 10})", e.answer, e.prompt)
    assert task.extract_answer("1/0") is None and task.extract_answer("print(3)\nprint('7 ')") == "7"


def test_program_task_wraps_a_numeric_task(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"prompt": "What is 12345 * 6789?", "answer": "83810205"}) + "\n")
    task = ProgramTask(get_task(TaskConfig(name=str(data), test_fraction=0.0)))
    assert task.verify("```python\nprint(12345 * 6789)\n```", "83810205")
    assert task.verify("print(83810205.0)", "83810205")  # numeric checker of the file task
    assert not task.verify("print(12345 * 6788)", "83810205")


class Scripted:
    """A teacher whose programs are given per question: `script[question][try]` (the last one
    repeats); records every prompt and temperature it was asked with."""

    kind, name = "scripted", "scripted"

    def __init__(self, script):
        self.script, self.tokenizer, self.asked = script, char_tokenizer(), []

    def identity(self):
        return "scripted-0"

    def generate(self, prompts, *, temperature, num_samples=1, **_):
        out = []
        for p in prompts:
            question = next(q for q in self.script if str(p).rstrip().endswith(q.strip()) or
                            str(p).rstrip().endswith(q.strip() + "\n```python"))
            tries = [t for t, (pp, _) in enumerate(self.asked) if pp == question]
            self.asked.append((question, temperature))
            self.prompts = getattr(self, "prompts", []) + [str(p)]
            plan = self.script[question]
            out.append([Completion(plan[min(len(tries), len(plan) - 1)], [], "stop")] * num_samples)
        return out


def _progs(n=4, split="train"):
    return get_task(TaskConfig(name="progs")).examples(split, n, 0)


def test_traces_resample_until_correct(tmp_path, monkeypatch):
    ex = _progs(3)
    wrong = lambda e: f"print({(int(e.answer) + 1) % 10})"
    script = {ex[0].prompt: [ex[0].solution],  # right at once (greedy)
              ex[1].prompt: [wrong(ex[1]), "while True: pass", ex[1].solution],  # wrong, loops, then right
              ex[2].prompt: ["import os\nprint(os.listdir('/'))\nraise SystemExit(3)"]}  # never right
    teacher = Scripted(script)
    monkeypatch.setattr("retort.lm.teachers.open_teacher", lambda *a, **k: teacher)
    out = tmp_path / "pt"
    assert main(["traces", "task.name=progs", "program=python", "n_prompts=3", "programs.tries=4",
                 "programs.timeout_s=4", f"out={out}"]) == 0
    rows = {r["prompt"]: r for r in read_traces(out).to_pylist()}
    info = {q: json.loads(r["program"]) for q, r in rows.items()}
    assert [rows[e.prompt]["correct"] for e in ex] == [True, True, False]
    assert [info[e.prompt]["tries"] for e in ex] == [1, 3, 4]
    assert rows[ex[1].prompt]["completion"] == ex[1].solution and rows[ex[1].prompt]["answer"] == ex[1].answer
    assert info[ex[2].prompt]["exit_code"] == 3 and "'sandbox'" in info[ex[2].prompt]["output"]  # the output kept
    # the first try greedy, then the paper's 0.5; a question stops being asked once it is right
    temps = [t for q, t in teacher.asked if q == ex[2].prompt]
    assert temps == [0.0, 0.5, 0.5, 0.5] and [t for q, t in teacher.asked if q == ex[0].prompt] == [0.0]
    m = read_manifest(out)
    assert m["params"]["program"] == "python" and m["stats"]["program_tries"]["max"] == 4
    # rerun when finished: nothing is asked again; with other tries: refused, naming the key
    asked = len(teacher.asked)
    assert main(["traces", "task.name=progs", "program=python", "n_prompts=3", "programs.tries=4",
                 "programs.timeout_s=4", f"out={out}"]) == 0
    assert len(teacher.asked) == asked and read_traces(out).num_rows == 3
    assert main(["traces", "task.name=progs", "program=python", "n_prompts=3", "programs.tries=2",
                 "programs.timeout_s=4", f"out={out}"]) == 2
    # a student of the set is evaluated during training by running its programs, whatever the task
    seen = []
    monkeypatch.setattr("retort.lm.eval.evaluate", lambda model, tok, task, cfg, **_: seen.append(task) or {})
    run = load_config(TrainRun, None, ["task.name=modchain", "data.source=traces", f"data.traces={out}",
                                       "eval.fidelity=false"])
    LMTrack().train_evaluator(run)(None, None, get_task(run.task))
    assert isinstance(seen[0], ProgramTask) and seen[0].inner.name == "modchain"


def test_dynamic_exemplars_and_pal_prompt(tmp_path, monkeypatch):
    pool = [("Q:1+2*3\n", "x=1\nprint(x)"), ("Q:9-9-9-9-9\n", "x=9\nprint(x)"), ("Q:4*4\n", "x=4\nprint(x)"),
            ("Q:9-9-9-9-8\n", "x=0\nprint(x)")]
    dyn = Exemplars(pool, 2, "dynamic")
    assert dyn.for_question("Q:9-9-9-9-7\n") == [1, 3]  # most similar first
    assert dyn.for_question("Q:9-9-9-9-9\n")[0] == 3  # never the question itself
    assert Exemplars(pool, 2, "static").for_question("Q:4*4\n") == [0, 1]
    rnd = Exemplars(pool, 2, "random", seed=1)
    assert rnd.for_question("Q:5\n") == rnd.for_question("Q:5\n") and len(set(rnd.for_question("Q:5\n"))) == 2
    prompt = pal_prompt("Q:9-9-9-9-7\n", [pool[i] for i in dyn.for_question("Q:9-9-9-9-7\n")])
    assert prompt.index("Q:9-9-9-9-9") < prompt.index("Q:9-9-9-9-8") < prompt.index("Question: Q:9-9-9-9-7")
    assert prompt.endswith("```python\n") and "x=9\nprint(x)" in prompt and pal_prompt("Q:1\n", [], native=True) == "Q:1\n"
    assert pal_prompt("What is 2+2?", []) == "Write a Python program that prints the answer to the last question.\n\n" \
        "Question: What is 2+2?\n```python\n"

    # a pool from a program trace set: its correct rows only
    ex = _progs(2)
    script = {ex[0].prompt: [ex[0].solution], ex[1].prompt: ["print('no')"]}
    monkeypatch.setattr("retort.lm.teachers.open_teacher", lambda *a, **k: Scripted(script))
    pooled = tmp_path / "pool"
    assert main(["traces", "task.name=progs", "program=python", "n_prompts=2", "programs.tries=1",
                 f"out={pooled}"]) == 0
    test = _progs(2, "test")
    teacher = Scripted({e.prompt: [e.solution] for e in test})
    monkeypatch.setattr("retort.lm.teachers.open_teacher", lambda *a, **k: teacher)
    assert main(["traces", "task.name=progs", "program=python", "split=test", "n_prompts=2", "programs.exemplars=3",
                 f"programs.pool={pooled}", f"out={tmp_path / 'test'}"]) == 0
    for p in teacher.prompts:
        assert p.startswith("Write a Python program") and ex[0].solution in p and "print('no')" not in p
    shown = [json.loads(r)["exemplars"] for r in read_traces(tmp_path / "test").column("program").to_pylist()]
    assert shown == [[ex[0].prompt]] * 2


def test_exemplars_need_programs(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["traces", "task.name=modchain", "program=python", "teacher.name=preset:nano", "n_prompts=1",
                 "programs.exemplars=2", f"out={out}"]) == 2
    assert "programs.pool=DIR" in capsys.readouterr().err and not out.exists()


def test_eval_runs_the_students_programs(tmp_path, monkeypatch, capsys):
    ex = get_task(TaskConfig(name="progs")).examples("test", 3, 1234)
    answers = {e.prompt: text for e, text in zip(ex, [ex[0].solution, "print(11)", "while True: pass"])}
    monkeypatch.setattr("retort.lm.eval.run.generate", lambda m, t, prompts, **k: [
        [Completion(answers[p], [1, 2], "stop")] for p in prompts])
    out = tmp_path / "eval.json"
    assert main(["eval", "task.name=progs", "program=python", "model.name=preset:nano", "eval.n=3",
                 "programs.timeout_s=4", f"out={out}"]) == 0
    r = json.loads(out.read_text())["preset:nano"]
    assert r["accuracy"] == pytest.approx(1 / 3) and r["no_answer"] == 1  # the loop was stopped: no answer
    assert "python program" in r["answer_format"]


def test_progs_toy_through_the_cli(tmp_path):
    """The whole path with real models: a (tiny, untrained) teacher writes programs for the toy,
    a student is trained by sft on (question, program), and `retort eval program=python` runs the
    student's programs. (A teacher trained to write correct ones: test_slow_programs.py.)"""
    out = tmp_path / "pt"
    assert main(["traces", "task.name=progs", "program=python", "teacher.name=preset:nano", "n_prompts=4",
                 "programs.tries=2", "sampling.max_new_tokens=24", f"out={out}"]) == 0
    rows = read_traces(out).to_pylist()
    assert len(rows) == 4 and all(json.loads(r["program"])["tries"] == 2 for r in rows if not r["correct"])
    student = tmp_path / "student"
    assert main(["train", "method=sft", "data.source=traces", f"data.traces={out}", "data.trace_filter=all",
                 "data.n_train=8", "student.name=preset:nano", "train.steps=2", "train.batch_size=2", "eval.n=2",
                 "eval.max_new_tokens=8", "eval.fidelity=false", f"out={student}"]) == 0
    res = tmp_path / "eval.json"
    assert main(["eval", "task.name=progs", "program=python", f"model.name={student / 'model'}", "eval.n=2",
                 "eval.max_new_tokens=24", f"out={res}"]) == 0
    assert json.loads(res.read_text())[str(student / "model")]["n"] == 2

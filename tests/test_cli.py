import json
import subprocess
import sys


from conftest import tiny_overrides
from retort.cli import COMMANDS, main

CLI = [sys.executable, "-m", "retort.cli"]


def test_help_lists_every_command():
    out = subprocess.run(CLI + ["--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out


def test_end_to_end_train_then_eval(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(CLI + ["train", *tiny_overrides(out, steps=8)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "done: 8 steps" in proc.stderr
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "model/model.safetensors", "model/tokenizer.json"):
        assert (out / f).is_file(), f
    res = tmp_path / "eval.json"
    proc = subprocess.run(CLI + ["eval", "-m", f"student={out / 'model'}", "--json", str(res), "eval.n=5",
                                 "eval.k=2", "eval.max_new_tokens=6"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(res.read_text())
    assert set(data) == {"student"} and data["student"]["n"] == 5 and "pass@2" in data["student"]


def test_listing_commands(capsys):
    assert main(["tasks", "--n", "1"]) == 0
    assert "modchain" in capsys.readouterr().out
    assert main(["methods"]) == 0
    assert "sft" in capsys.readouterr().out
    assert main(["config", "train"]) == 0
    assert "train.lr = 0.001" in capsys.readouterr().out


def _bad(tmp_path, capsys, args, expect):
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert expect in err, err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_bad_config_key(tmp_path, capsys):
    _bad(tmp_path, capsys, ["train", *tiny_overrides(tmp_path / "run"), "train.lrr=1"], "valid keys under 'train'")


def test_bad_config_value(tmp_path, capsys):
    _bad(tmp_path, capsys, ["train", *tiny_overrides(tmp_path / "run"), "train.steps=0"], "train.steps=0 is out of range")


def test_malformed_yaml(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("train: [1,\n")
    _bad(tmp_path, capsys, ["train", "-c", str(f), *tiny_overrides(tmp_path / "run")], "not valid YAML")


def test_bad_data_file(tmp_path, capsys):
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b"}\n')
    _bad(tmp_path, capsys, ["train", *tiny_overrides(tmp_path / "run"), f"task.name={f}"],
         f"{f}:2: missing required field 'answer'")


def test_bad_model_path(tmp_path, capsys):
    _bad(tmp_path, capsys, ["train", *tiny_overrides(tmp_path / "run"), "student.name=/no/such/model"],
         "model path not found: /no/such/model")
    _bad(tmp_path, capsys, ["eval", "-m", str(tmp_path / "missing.gguf")], "model file not found")


def test_bad_teacher_path_found_at_the_first_step_leaves_nothing(tmp_path, capsys):
    # the teacher loads lazily (at the first loss): the run dir exists by then and must go again
    args = ["train", *tiny_overrides(tmp_path / "run"), "method=kd", f"teacher.name={tmp_path}"]
    _bad(tmp_path, capsys, args, "no config.json here")
    _bad(tmp_path, capsys, args, "no config.json here")  # the same command again: not "already holds a run"


def test_every_config_file_the_help_and_readme_cite_exists():
    import re
    from pathlib import Path

    root = Path(__file__).parent.parent
    texts = [(root / "README.md").read_text()]
    for name, cmd in COMMANDS.items():
        texts.append(cmd.get_help(cmd.make_context(name, [], resilient_parsing=True)))
    cited = {m for t in texts for m in re.findall(r"configs/[\w./-]+\.(?:yaml|jsonl)", t)}
    assert cited and all((root / c).is_file() for c in cited), sorted(c for c in cited if not (root / c).is_file())


def test_config_teacher_prints_the_teachers_defaults(capsys):
    assert main(["config", "teacher"]) == 0
    out = capsys.readouterr().out
    assert "train.steps = 1500" in out and "data.max_len = 160" in out and "student.name = 'preset:teacher'" in out
    assert main(["config", "eval"]) == 0
    out = capsys.readouterr().out
    assert "task.test_fraction = 0.0" in out and "model.name = 'builtin:teacher'" in out


def test_python_dash_m_retort_is_the_retort_command():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "retort", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout and "Usage" in out.stdout

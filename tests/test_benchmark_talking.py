"""benchmarks/talking.py: its bookkeeping with stand-ins for training and evaluation (every arm at the
same steps, the layer pair where it belongs, rows and verdicts in the JSON, --verdicts-only), and,
in the slow tier, the script itself at a tiny size."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def talking(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("talking", None)
    return importlib.import_module("talking")


def test_every_arm_trains_at_equal_steps_and_the_json_states_the_orderings(talking, monkeypatch, tmp_path):
    trained = {}
    monkeypatch.setattr(talking, "_train", lambda out, overrides: trained.setdefault(str(out), overrides) and 1.0)
    acc = {"sft": [0.5, 0.6, 0.55], "kd": [0.6, 0.7, 0.6], "hidden_kd": [0.6, 0.6, 0.6], "talking": [0.7, 0.8, 0.7]}

    def accuracy(model_dir, task, n):
        if model_dir.parent.name == "teacher":
            return 0.9
        return acc[model_dir.parent.name][int(model_dir.parent.parent.name.removeprefix("seed"))]

    monkeypatch.setattr(talking, "_accuracy", accuracy)
    out = tmp_path / "talking.json"
    monkeypatch.setattr(sys, "argv", ["talking.py", "--work", str(tmp_path / "w"), "--json", str(out),
                                      "--steps", "7", "--layers", "1:3"])
    talking.main()
    students = {k: v for k, v in trained.items() if "seed" in k}
    assert len(students) == 12 and sum("teacher" in k for k in trained) == 1
    for run, overrides in students.items():
        assert "train.steps=7" in overrides and "student.name=preset:student" in overrides
        assert any(o.startswith("teacher.name=") and o.endswith("teacher/model") for o in overrides)
        arm = Path(run).name
        assert ("method=talking" in overrides) == (arm == "talking")
        assert ("method_args.hidden=1:3," in overrides) == (arm == "hidden_kd")
        assert ("method_args.layers=1:3," in overrides) == (arm == "talking")
    results = json.loads(out.read_text())
    assert results["teacher"]["accuracy"] == 0.9
    assert results["rows"]["talking"]["accuracy"] == {"0": 0.7, "1": 0.8, "2": 0.7}
    verdicts = {v["claim"].split(" (")[0]: v["verdict"] for v in results["verdicts"]}
    assert verdicts == {"talking > kd": "holds", "talking > hidden-state kd": "holds", "kd > sft, no KD": "holds"}
    results["runs"]["1"]["talking"]["accuracy"] = 0.5  # below kd in one seed: no longer every seed
    out.write_text(json.dumps(results))
    monkeypatch.setattr(sys, "argv", ["talking.py", "--json", str(out), "--verdicts-only"])
    talking.main()
    again = {v["claim"].split(" (")[0]: v["verdict"] for v in json.loads(out.read_text())["verdicts"]}
    assert again["talking > kd"] == "unresolved"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_script_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "talking.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "talking.py"), "--work", str(tmp_path / "w"),
                           "--seeds", "0", "1", "--steps", "2", "--teacher-steps", "2", "--batch-size", "4",
                           "--n-test", "4", "--json", str(out)], check=False, capture_output=True,
                          text=True, env={**os.environ, "RETORT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["rows"]) == {"sft", "kd", "hidden_kd", "talking"}
    assert all(len(r["accuracy"]) == 2 for r in results["rows"].values()) and len(results["verdicts"]) == 3
    assert "| talking |" in proc.stdout

"""`retort demo --track diffuse --methods ...`: every method of the track is a demo row, the CLI takes
each name, and each non-default row trains, is evaluated beside its teacher and reaches the report
(here at tiny sizes: the rows' and the teachers' budgets are the inputs this test controls)."""

import html
import json

import pytest

from retort.cli import main
from retort.config import load_config
from retort.diffuse.config import DiffuseRun
from retort.diffuse.demo import DEFAULT_METHODS, DEMO_RUNS
from retort.diffuse.methods import METHODS

EXTRA = sorted(set(METHODS) - set(DEFAULT_METHODS))


def _method(overrides):
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("method="))


def test_every_method_of_the_track_is_a_demo_row(tmp_path):
    assert set(METHODS) <= set(DEMO_RUNS)
    for name, (dataset, overrides) in DEMO_RUNS.items():
        run = load_config(DiffuseRun, None, ["track=diffuse", *overrides, f"out={tmp_path / name}"])
        assert run.task.name == dataset and run.method == _method(overrides)
        if name in METHODS:
            assert run.method == name
    # the default set stays the fast one
    assert DEFAULT_METHODS == ["dmd2", "dmd", "cd", "dmd2-digits"]


def test_the_cli_takes_every_method_name_of_the_track(tmp_path, capsys):
    out = tmp_path / "demo"
    # every name of the track is accepted; the one unknown name is the only one refused, before any work
    assert main(["demo", "--track", "diffuse", "--methods", ",".join([*METHODS, "nope"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown nope for --track diffuse" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["demo", "--help"]) == 0
    helptext = " ".join(capsys.readouterr().out.split())
    assert all(m in helptext for m in METHODS)


TINY = ["train.steps=6", "train.batch_size=32", "train.eval_every=0", "train.save_every=0", "train.log_every=1",
        "eval.n=200"]
TINY_ROW = {"onpolicy_dmd": ["student.name=causal:32-2", "method_args.ode_steps=3", "method_args.ode_pairs=32",
                             "method_args.ratio=1"],
            "uni_instruct": ["method_args.warmup_steps=1"],
            "denoise": ["student.name=mlp:32-2"]}
TINY_TEACHER = {"student": {"name": "mlp:32-2"},
                "method_args": {"target": "exact", "uniform": 0.5, "label_dropout": 0.1},
                "train": {"steps": 30, "batch_size": 128, "lr": 2e-3, "schedule": "constant", "warmup_steps": 0}}


@pytest.mark.slow
def test_every_non_default_method_runs_in_the_demo(tmp_path, monkeypatch):
    from retort.diffuse import teacher

    for name in EXTRA:
        dataset, overrides = DEMO_RUNS[name]
        monkeypatch.setitem(DEMO_RUNS, name, (dataset, [*overrides, *TINY, *TINY_ROW.get(name, [])]))
        monkeypatch.setitem(teacher.TEACHERS, dataset, TINY_TEACHER)
    monkeypatch.setitem(teacher.BASE, "eval", {"n": 200, "collapse": "off"})
    out = tmp_path / "demo"
    assert main(["demo", "--track", "diffuse", "--methods", ",".join(EXTRA), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    page = (out / "report.html").read_text()
    nfe = {"denoise": 35, "gdd": 1, "uni_instruct": 1, "phased_dmd": 4, "msd": 1, "onpolicy_dmd": 4}
    for name in EXTRA:
        label, row = next((k, v) for k, v in results.items() if v.get("run_dir") == name)
        assert label == f"{name}, {nfe[name]} NFE ({DEMO_RUNS[name][0]})"
        assert row["swd_ratio"] > 0 and "nonfinite" not in row
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["steps"] == 6
        assert html.escape(label) in page
    # each dataset's teacher row beside its students
    assert {k for k in results if k.startswith("teacher")} == {
        "teacher (exact), 35 NFE (ring)", "teacher (exact), 35 NFE (classes)", "teacher (exact), 35 NFE (ring-seq)"}

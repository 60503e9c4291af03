"""benchmarks/real_lm.py without running a model: the commands it plans (every row at the same steps
and data, the DAS row on the DAS selection, the cross-tokenizer and same-tokenizer rows, the
held-out evaluation sizes), and the summary it writes from finished evaluations and runs (gap
recovered, orderings, merging with an earlier results file, the gap check that stops a task)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# per row, accuracy on seeds 0, 1, 2 (teacher and untrained student: the same every seed)
ACC = {"teacher": [0.9] * 3, "student": [0.2] * 3, "sft": [0.50, 0.52, 0.48], "sft_das": [0.49, 0.50, 0.47],
       "kd_uld": [0.45, 0.53, 0.47], "kd_hybrid": [0.60, 0.62, 0.58], "gkd": [0.55, 0.57, 0.50],
       "hidden": [0.70, 0.72, 0.71]}


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("real_lm", None)
    return importlib.import_module("real_lm")


def _arg(argv, key):
    return next((a.split("=", 1)[1] for a in argv if a.startswith(key + "=")), None)


def test_smoke_plan_has_every_step_in_order(bench, tmp_path):
    steps = bench.plan("arith", tmp_path, bench.SIZES["smoke"], [0], list(bench.ROWS))
    # the smoke size's base evaluation is its gap check (the same 4 problems): no eval-base
    assert [s.name for s in steps] == ["gap", "traces", "correct", "das", "sft-0", "sft_das-0",
                                      "kd_uld-0", "kd_hybrid-0", "gkd-0", "hidden-0", "eval-0"]
    by = {s.name: s.argv for s in steps}
    assert "task.name=rg:basic_arithmetic" in by["gap"] and "task.answer=final_number" in by["traces"]
    assert _arg(by["traces"], "sampling.topk") == "16" and _arg(by["traces"], "sampling.n") == "2"
    assert "--das" in by["das"] and "--correct" in by["das"]
    trains = [s for s in steps if s.argv[0] == "train"]
    for key in ("train.steps", "train.batch_size", "data.n_train"):  # equal data and steps for every row
        assert {_arg(s.argv, key) for s in trains} == {_arg(trains[0].argv, key)}
    assert {_arg(s.argv, "data.traces") for s in trains if s.name != "sft_das-0"} == {str(tmp_path / "arith/correct")}
    assert _arg(by["sft_das-0"], "data.traces") == str(tmp_path / "arith/das")
    assert _arg(by["kd_uld-0"], "method_args.cross_tokenizer") == "uld"
    assert _arg(by["kd_hybrid-0"], "method_args.teacher") == "offline"
    assert _arg(by["gkd-0"], "method") == "gkd" and _arg(by["gkd-0"], "method_args.cross_tokenizer") == "hybrid"
    assert _arg(by["hidden-0"], "student.name") == bench.TEACHER and _arg(by["hidden-0"], "student.keep_layers")
    assert _arg(by["hidden-0"], "method_args.hidden")
    assert all("--resume" in s.argv for s in trains)
    ev = by["eval-0"]
    assert ev[ev.index("--fidelity-to") + 1] == "teacher"
    assert [ev[i + 1].split("=")[0] for i, a in enumerate(ev) if a == "-m"] == ["teacher", *bench.ROWS]


def test_full_size_evaluates_at_least_200_and_rows_subset(bench, tmp_path):
    steps = bench.plan("chain", tmp_path, bench.SIZES["full"], [0, 1, 2], ["sft", "kd_hybrid"])
    assert "das" not in [s.name for s in steps]  # no DAS row: no selection
    assert [s.name for s in steps].index("eval-base") == 3
    assert [s.name for s in steps if s.name.startswith("eval-") and s.name != "eval-base"] == \
        ["eval-0", "eval-1", "eval-2"]
    for s in steps:
        if s.name.startswith("eval"):
            assert int(_arg(s.argv, "eval.n")) >= 200
    assert int(_arg(steps[0].argv, "eval.n")) == 64  # the gap check


def test_plan_option_prints_commands(bench, tmp_path, capsys):
    bench.main(["--size", "smoke", "--seeds", "0", "--task", "arith", "--work", str(tmp_path), "--plan"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 11 and all(line.startswith("retort ") for line in lines)
    assert not list(tmp_path.iterdir())  # --plan runs and writes nothing


def _fake_work(work: Path, task: str, seeds=(0, 1, 2)) -> None:
    t = work / task
    t.mkdir(parents=True)
    res = {label: {"accuracy": ACC[label][0], "no_answer_rate": 0.1, "agree_answer": 0.5, "mean_tokens": 3.0}
           for label in ("teacher", "student")}
    (t / "eval-base.json").write_text(json.dumps(res))
    for seed in seeds:
        ev = {"teacher": res["teacher"]}
        for row in ("sft", "sft_das", "kd_uld", "kd_hybrid", "gkd", "hidden"):
            ev[row] = {"accuracy": ACC[row][seed], "no_answer_rate": 0.0, "agree_answer": 0.7, "mean_tokens": 4.0}
            (t / f"{row}-{seed}").mkdir()
            (t / f"{row}-{seed}" / "summary.json").write_text(json.dumps({"train_time_s": 10.0 + seed}))
            (t / f"{row}-{seed}" / "peak_rss.json").write_text(json.dumps({"peak_rss_bytes": 2**30}))
        (t / f"eval-{seed}.json").write_text(json.dumps(ev))


def test_summary_gap_recovered_and_verdicts(bench, tmp_path):
    _fake_work(tmp_path, "arith")
    runs = bench.collect("arith", tmp_path, [0, 1, 2], list(bench.ROWS))
    assert runs["teacher"]["accuracy"] == {"0": 0.9, "1": 0.9, "2": 0.9}
    assert runs["kd_hybrid"]["train_seconds"] == {"0": 10.0, "1": 11.0, "2": 12.0}
    assert runs["gkd"]["peak_rss_bytes"]["1"] == 2**30 and runs["sft"]["fidelity"]["2"] == 0.7
    results = {"tasks": {"arith": {"runs": runs}}}
    bench.summarize(results, "arith")
    gap = results["tasks"]["arith"]["gap_recovered"]
    # the best SmolLM2 row is kd_hybrid (mean 0.60); hidden (another student) is not counted
    assert gap["best_row"] == "kd_hybrid"
    assert gap["recovered"] == pytest.approx((0.60 - 0.2) / (0.9 - 0.2))
    assert gap["meets_target"] is True
    verdicts = results["tasks"]["arith"]["verdicts"]
    # kd_hybrid > sft on every seed; kd_uld against sft mixed; gkd below kd_hybrid on every seed
    assert [x["verdict"] for x in verdicts] == ["holds", "unresolved", "does not hold"]
    assert results["tasks"]["arith"]["means"]["sft"]["accuracy"]["mean"] == pytest.approx(0.5)


def test_missing_rows_wait_and_merge_keeps_earlier_seeds(bench, tmp_path):
    _fake_work(tmp_path, "arith", seeds=(0,))
    new = bench.collect("arith", tmp_path, [0], ["sft", "kd_hybrid"])
    old = {"sft": {"accuracy": {"1": 0.3}}, "gkd": {"accuracy": {"1": 0.4}}}
    runs = bench.merge(old, new)
    assert runs["sft"]["accuracy"] == {"1": 0.3, "0": 0.50} and runs["gkd"]["accuracy"] == {"1": 0.4}
    results = {"tasks": {"arith": {"runs": runs}}}
    bench.summarize(results, "arith")
    assert [x["verdict"] for x in results["tasks"]["arith"]["verdicts"]] == ["waiting"] * 3  # seeds differ


def test_unqualified_task_stops_after_the_gap_check(bench, tmp_path, monkeypatch):
    ran = []

    def fake_step(step, log):
        ran.append(step.name)
        Path(step.out).parent.mkdir(parents=True, exist_ok=True)
        Path(step.out).write_text(json.dumps({"teacher": {"accuracy": 0.5, "n": 4},
                                              "student": {"accuracy": 0.4, "n": 4}}))

    monkeypatch.setattr(bench, "run_step", fake_step)
    out = tmp_path / "r.json"
    bench.main(["--size", "full", "--seeds", "0", "--task", "chain", "--work", str(tmp_path / "w"), "--json", str(out)])
    assert ran == ["gap"]
    entry = json.loads(out.read_text())["tasks"]["chain"]
    assert entry["gap_check"]["qualifies"] is False and entry["gap_check"]["gap"] == pytest.approx(0.1)
    assert entry["commands"]["gap"].startswith("retort eval task.name=rg:chain_sum")


def test_an_eval_missing_a_row_is_not_complete(bench, tmp_path):
    steps = bench.plan("arith", tmp_path, bench.SIZES["smoke"], [0], ["sft", "gkd"])
    ev = next(s for s in steps if s.name == "eval-0")
    assert not bench._complete(ev)
    Path(ev.out).parent.mkdir(parents=True)
    Path(ev.out).write_text(json.dumps({"teacher": {}, "sft": {}}))  # gkd added since
    assert not bench._complete(ev)
    Path(ev.out).write_text(json.dumps({"teacher": {}, "sft": {}, "gkd": {}}))
    assert bench._complete(ev)


def test_drop_models_removes_a_seeds_models_after_its_eval(bench, tmp_path, monkeypatch):
    work = tmp_path / "w"

    def fake_step(step, log):
        out = Path(step.out)
        if step.argv[0] == "eval":
            out.parent.mkdir(parents=True, exist_ok=True)
            labels = [step.argv[i + 1].split("=", 1)[0] for i, a in enumerate(step.argv) if a == "-m"]
            out.write_text(json.dumps({label: {"accuracy": 0.5} for label in labels}))
        elif step.argv[0] == "train":
            (out / "model").mkdir(parents=True)
            (out / "summary.json").write_text("{}")
            (out / "peak_rss.json").write_text(json.dumps({"peak_rss_bytes": 1}))
        else:
            out.mkdir(parents=True, exist_ok=True)
            (out / "manifest.json").write_text(json.dumps({"complete": True}))

    monkeypatch.setattr(bench, "run_step", fake_step)
    bench.main(["--size", "smoke", "--seeds", "0", "--task", "arith", "--rows", "sft", "--work", str(work),
                "--json", str(tmp_path / "r.json"), "--drop-models"])
    assert (work / "arith/sft-0/summary.json").is_file() and not (work / "arith/sft-0/model").exists()

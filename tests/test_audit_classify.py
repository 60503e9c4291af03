"""`retort audit track=classify`: a real tiny classifier overfit on a few rows is told apart from
held-out rows by its loss (AUC well above chance), the result lands in its run directory, and
`retort report` shows it beside utility against epsilon (runs without DP at infinity)."""

import json
import shutil

import numpy as np
import pytest

from retort.cli import main


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory):
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("audit-cls")
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:40], order[40:440]
    np.savez(root / "few.npz", x=x[train] / 16.0, y=y[train], x_test=x[test] / 16.0, y_test=y[test])
    run = root / "run"
    assert main(["train", "track=classify", f"task.name={root / 'few.npz'}", "task.val_fraction=0", "method=ce",
                 "student.name=mlp:128", f"out={run}", "train.steps=100", "train.batch_size=40", "train.lr=1e-2",
                 "train.weight_decay=0", "train.eval_every=0", "train.log_every=50", "threads=1"]) == 0
    return run


def test_an_overfit_classifier_leaks_membership(overfit_run):
    assert main(["audit", "track=classify", "-m", str(overfit_run)]) == 0
    result = json.loads((overfit_run / "audit.json").read_text())["models"][str(overfit_run)]
    loss = result["mia"]["loss"]
    assert loss["members"] == 40 and loss["nonmembers"] == 400
    assert loss["member_loss"] < loss["nonmember_loss"]
    assert loss["auc"] > 0.75, loss  # 0.82 at this seed; chance is 0.5
    assert result["mia"]["members"] == f"train split of {overfit_run.parent / 'few.npz'}"
    # the model against itself as the reference: every calibrated score is 0, no better than chance
    assert main(["audit", "track=classify", "-m", str(overfit_run), "--reference", str(overfit_run / "model"),
                 "--out", str(overfit_run.parent / "self.json")]) == 0
    ref = json.loads((overfit_run.parent / "self.json").read_text())["models"][str(overfit_run)]["mia"]["reference"]
    assert ref["auc"] == pytest.approx(0.5)


def test_classifier_audits_refuse_what_they_cannot_measure(overfit_run, tmp_path, capsys):
    for args, msg in [(["--canaries", "x.json"], "canary exposure is measured on language models"),
                      (["--members", "test", "--nonmembers", "test"], "must be disjoint splits"),
                      (["--members", "rows.npz"], "--members rows.npz: for classifiers a split")]:
        assert main(["audit", "track=classify", "-m", str(overfit_run), "--out", str(tmp_path / "a.json"),
                     *args]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


def test_the_report_shows_audits_and_utility_against_epsilon(overfit_run, tmp_path):
    assert main(["audit", "track=classify", "-m", str(overfit_run)]) == 0
    # a second run as a DP run would record its budget (the privacy section of summary.json)
    private = tmp_path / "private"
    shutil.copytree(overfit_run, private)
    summary = json.loads((private / "summary.json").read_text())
    summary["privacy"] = {"epsilon": 2.5, "delta": 1e-5, "noise_multiplier": 1.1}
    (private / "summary.json").write_text(json.dumps(summary))
    (private / "audit.json").unlink()
    assert main(["audit", "track=classify", "-m", f"dp={private}", "--out", str(tmp_path / "dp-audit.json")]) == 0
    assert json.loads((tmp_path / "dp-audit.json").read_text())["models"]["dp"]["epsilon"] == 2.5
    out = tmp_path / "report.html"
    assert main(["report", str(overfit_run), str(private), str(tmp_path / "dp-audit.json"), "-o", str(out)]) == 0
    page = out.read_text()
    section = page[page.index("<h2>Privacy</h2>"):]
    assert "MIA AUC" in section and "∞ (no DP)" in section and ">2.50<" in section
    assert 'alt="utility vs privacy budget epsilon"' in section
    # without any DP run or audit there is no privacy section
    plain = tmp_path / "plain"
    shutil.copytree(overfit_run, plain)
    (plain / "audit.json").unlink()
    assert main(["report", str(plain), "-o", str(tmp_path / "plain.html")]) == 0
    assert "<h2>Privacy</h2>" not in (tmp_path / "plain.html").read_text()

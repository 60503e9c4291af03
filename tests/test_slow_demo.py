"""`retort demo` end to end (trains the built-in teacher: minutes)."""

import json

import pytest

from retort.cli import main

# the first demo run trains the teacher: ~7 minutes alone on 2 cores, more on a shared machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    teacher = results["teacher (built-in)"]
    answers = results["student: answers only"]
    assert teacher["accuracy"] >= 0.95
    assert answers["accuracy"] < 0.6
    distilled = results["student: sft on teacher traces"]
    assert teacher["params"] >= 10 * answers["params"]
    assert distilled["accuracy"] > answers["accuracy"]
    html = (out / "report.html").read_text()
    assert "student: sft on teacher traces" in html and "data:image/png;base64," in html
    # the second run reuses the cached teacher and the trained students
    assert main(["demo", "--out", str(out)]) == 0


def test_diffuse_demo_end_to_end(tmp_path):
    """`retort demo --track diffuse` (~5 minutes alone on 2 cores, teachers included): every student beats
    its mode-averaged start, the one-step dmd2 student covers the ring, the digits student is conditional."""
    out = tmp_path / "demo-diffuse"
    assert main(["demo", "--track", "diffuse", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    dmd2 = next(v for k, v in results.items() if k.startswith("dmd2, 1 NFE (ring)"))
    assert dmd2["modes_covered"] == 8 and dmd2["swd_ratio"] < 2.0
    digits = next(v for k, v in results.items() if k.startswith("dmd2-digits"))
    teacher = next(v for k, v in results.items() if k.startswith("teacher, 35 NFE (digits)"))
    assert digits["nfe"] == 1 and digits["label_match"] > 0.9 and digits["fd"] < 5 * teacher["fd"]
    html = (out / "report.html").read_text()
    assert "samples of each generator" in html
    assert main(["demo", "--track", "diffuse", "--out", str(out)]) == 0  # resumes: nothing trained again

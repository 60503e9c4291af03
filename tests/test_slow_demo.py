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

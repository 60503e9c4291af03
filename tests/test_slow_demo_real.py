"""`retort demo --real --size tiny` end to end on the real packaged models (Qwen2.5-Coder-0.5B-Instruct
teacher, SmolLM2-135M-Instruct students): traces, correct ones, sft and cross-tokenizer kd, the
evaluation of all four side by side and the report; run again, everything finished is reused."""

import json

import pytest

from retort.cli import main
from retort.lm.demo_real import MODELS, STUDENT, TEACHER
from retort.lm.models.packaged import PACKAGED, installed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # two real models, on a shared 2-core machine


@pytest.fixture(autouse=True)
def _needs_the_models():
    pytest.importorskip("gguf")
    pytest.importorskip("reasoning_gym")
    pytest.importorskip("peft")
    for name in (TEACHER, STUDENT):
        if not installed(PACKAGED[name]):
            pytest.skip(f"{name} is not installed ({PACKAGED[name].pip})")


def test_real_demo_tiny_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--real", "--size", "tiny", "--out", str(out)]) == 0
    assert (out / "report.html").is_file() and "<html" in (out / "report.html").read_text()[:2000].lower()
    rows = json.loads((out / "eval.json").read_text())
    assert list(rows) == list(MODELS)
    for label, r in rows.items():
        assert r["n"] == 8 and 0 <= r["accuracy"] <= 1 and 0 <= r["no_answer_rate"] <= 1, label
        assert r["model"] == {"teacher": TEACHER, "student": STUDENT}.get(label, str(out / label / "model"))
    for run in ("sft", "kd"):
        assert (out / run / "summary.json").is_file() and (out / run / "model").is_dir()
    kd_log = (out / "kd" / "metrics.jsonl").read_text()
    assert '"spans_per_token"' in kd_log  # the cross-tokenizer loss ran

    # run again: every step is finished, nothing is redone (no trace, run or evaluation rewritten)
    done = [out / "traces" / "manifest.json", out / "correct" / "manifest.json", out / "sft" / "summary.json",
            out / "kd" / "summary.json", *[out / "eval" / f"{label}.json" for label in MODELS]]
    stamps = [p.stat().st_mtime_ns for p in done]
    assert main(["demo", "--real", "--size", "tiny", "--out", str(out)]) == 0
    assert [p.stat().st_mtime_ns for p in done] == stamps
    assert json.loads((out / "eval.json").read_text()) == rows

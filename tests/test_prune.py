"""Layer-pruned students (`student.keep_layers`): the first and last layers always kept, the
dropped block placed where the pruned copy's calibration loss is lowest, and the pruned copy scored
beside the full model before training."""

import io

import pytest
import torch
from rich.console import Console
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import tiny_overrides
from retort import api
from retort.lm.models.load import keep_layers
from retort.lm.models.presets import char_tokenizer


def _six_layers_with_two_idle(idle=(2, 3)):
    """A random 6-layer Llama whose layers `idle` write nothing to the residual stream (their output
    projections zeroed): dropping exactly them leaves the model's function unchanged."""
    tok = char_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)  # far from the identity: every other block matters
        for i in idle:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    return model, tok


def test_block_pruning_drops_the_block_that_costs_least_and_keeps_first_and_last():
    model, tok = _six_layers_with_two_idle()
    ids = tok("what is 17 + 25? 42", return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(ids).logits
    pruned = keep_layers(model, 4, tok)
    assert pruned.config.retort_kept_layers == [0, 1, 4, 5] and pruned.config.num_hidden_layers == 4
    assert pruned.config.retort_layers_before == 6
    with torch.no_grad():
        assert torch.allclose(pruned(ids).logits, before, atol=1e-4)  # only the idle layers went
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2, 3]


@pytest.mark.parametrize("n, how, want", [
    (2, "block", [0, 5]), (2, "even", [0, 5]), (4, "even", [0, 2, 3, 5]), (1, "block", [0]), (6, "block", list(range(6))),
])
def test_pruning_keeps_the_first_and_last_layers(n, how, want):
    model, tok = _six_layers_with_two_idle(idle=(1, 4))
    assert keep_layers(model, n, tok, how).config.retort_kept_layers == want


def test_block_pruning_without_a_tokenizer_drops_the_deepest_block_before_the_last():
    model, _ = _six_layers_with_two_idle()
    assert keep_layers(model, 3, None).config.retort_kept_layers == [0, 1, 5]


def test_a_pruned_student_is_scored_beside_the_full_model_before_training(tmp_path):
    console = Console(record=True, file=io.StringIO(), width=400)
    api.train(overrides=tiny_overrides(tmp_path / "r", steps=1, **{
        "student.name": "preset:teacher", "student.keep_layers": 2, "student.prune_check": 3, "eval.n": 4,
        "eval.max_new_tokens": 4}), console=console)
    out = console.export_text()
    assert "the pruned copy (2 of 4 layers of preset:teacher: [0, 3]) scores 0.000 on 3 test prompts of modchain, " \
           "the full model 0.000 (the full model scores 0), before training" in out


def test_prune_check_zero_skips_the_scoring(tmp_path):
    console = Console(record=True, file=io.StringIO(), width=400)
    api.train(overrides=tiny_overrides(tmp_path / "r", steps=1, **{
        "student.name": "preset:teacher", "student.keep_layers": 2, "student.prune_check": 0}), console=console)
    assert "pruned copy" not in console.export_text()

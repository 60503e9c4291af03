"""`student.grad_checkpointing`: the student's decoder layers recompute their activations in the
backward, so the graph keeps each layer's input only (issue 29: a real kd run's activations were its
largest cost past the weights and optimizer state); same loss, same gradients; refused where it
cannot work."""

from __future__ import annotations

import pytest
import torch

from retort.config import load_config
from retort.errors import ConfigError
from retort.lm.config import TrainRun
from retort.lm.track import LMTrack


def _student(*over):
    run = load_config(TrainRun, None, ["student.name=preset:student", "student.prune_check=0", *over])
    model, _ = LMTrack().load_student(run, None, 0)
    return model.train()


def _saved_bytes_and_grads(model):
    """Bytes the forward's graph keeps for the backward (weights excluded), and the gradients."""
    torch.manual_seed(0)
    ids = torch.randint(4, 60, (4, 48))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    return sum(kept.values()), loss, torch.autograd.grad(loss, list(model.parameters()))


def test_the_graph_keeps_a_fraction_of_the_activations_and_the_gradients_are_the_same():
    plain, plain_loss, plain_grads = _saved_bytes_and_grads(_student())
    ckpt_model = _student("student.grad_checkpointing=true")
    assert any(getattr(m, "gradient_checkpointing", False) for m in ckpt_model.modules())
    ckpt, ckpt_loss, ckpt_grads = _saved_bytes_and_grads(ckpt_model)
    assert ckpt < plain / 3, (ckpt, plain)
    assert ckpt_loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    for a, b in zip(plain_grads, ckpt_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_grad_checkpointing_under_dp_sgd_is_refused():
    with pytest.raises(ConfigError, match="student.grad_checkpointing with privacy"):
        _student("student.grad_checkpointing=true", "privacy.noise_multiplier=1.0")

"""train.ema: the weight average against its closed form, and through the training loop: what the
evaluator sees and what is exported is the average, the checkpoints keep it beside the raw weights,
and a run resumed after a crash ends with exactly the uninterrupted run's average."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from retort.classify import models
from retort.config import load_config
from retort.errors import ConfigError
from retort.track import get_track
from retort.train import train
from retort.train.ema import WeightEMA


def test_average_follows_its_closed_form_and_skips_frozen_parameters():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    net[1].weight.requires_grad_(False)
    ema = WeightEMA(net, decay=0.75, start=2)
    assert set(ema.shadow) == {"0.weight", "0.bias", "1.bias"}
    values = [1.0, 2.0, 4.0, 8.0]  # the weights after steps 1..4
    for step, v in enumerate(values, start=1):
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(v)
        ema.update(net, step)
    # steps 1, 2 copy (<= start); 3, 4 average: 0.75*2 + 0.25*4 = 2.5; 0.75*2.5 + 0.25*8 = 3.875
    assert torch.allclose(ema.shadow["0.weight"], torch.full((2, 2), 3.875))
    assert torch.allclose(ema.shadow["1.bias"], torch.tensor([3.875]))
    with ema.applied(net):
        assert float(net[0].bias[0].detach()) == 3.875
        assert float(net[1].weight[0, 0]) == 8.0  # frozen: never averaged
    assert float(net[0].bias[0].detach()) == 8.0  # the model's own weights are back after the block


def _run(out, *extra):
    args = ["track=classify", "task.name=digits", "method=ce", "student.name=mlp:16", "train.steps=30",
            "train.batch_size=32", "train.lr=0.05", "train.ema=0.8", "train.ema_start=5", "train.save_every=10",
            "train.eval_every=10", "train.log_every=10", f"out={out}", *extra]
    track = get_track("classify")
    return load_config(track.run_config, None, args), track


def _weights(path):
    model, _ = models.load(str(path))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_average_is_evaluated_exported_and_checkpointed(tmp_path):
    run, track = _run(tmp_path / "a")
    seen = []
    inner = track.train_evaluator(run)

    def evaluate(model, tok, task):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return inner(model, tok, task)

    summary = train(run, evaluate=evaluate)
    assert summary["ema"] == 0.8 and len(seen) == 3  # steps 10, 20 and the end
    ckpt = tmp_path / "a" / "ckpt" / "step-0000030"
    shadow, raw = load_file(ckpt / "ema.safetensors"), _weights(ckpt / "model")
    exported = _weights(tmp_path / "a" / "model")
    for k, v in shadow.items():
        assert torch.equal(exported[k], v), k          # the exported student is the average
        assert torch.equal(seen[-1][k], v), k          # so is what the final evaluation saw
    assert any(not torch.equal(raw[k], shadow[k]) for k in shadow)  # the checkpoint keeps the raw weights too
    # the evaluation during training saw the average too, not the raw weights of that step
    step20 = load_file(tmp_path / "a" / "ckpt" / "step-0000020" / "ema.safetensors")
    assert all(torch.equal(seen[1][k], step20[k]) for k in step20)


def test_a_resumed_run_ends_with_the_uninterrupted_runs_average(tmp_path):
    run, track = _run(tmp_path / "straight")
    train(run, evaluate=track.train_evaluator(run))
    run, track = _run(tmp_path / "cut")
    train(run, evaluate=track.train_evaluator(run))
    cut = tmp_path / "cut"
    # a crash just after the step-20 checkpoint: what was written after it is gone
    shutil.rmtree(cut / "ckpt" / "step-0000030")
    shutil.rmtree(cut / "model")
    (cut / "summary.json").unlink()
    train(run, resume=True, evaluate=track.train_evaluator(run))
    a, b = _weights(tmp_path / "straight" / "model"), _weights(cut / "model")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-7), k


def test_a_decay_of_one_is_refused():
    with pytest.raises(ConfigError, match="train.ema"):
        _run("/nonexistent", "train.ema=1.0")

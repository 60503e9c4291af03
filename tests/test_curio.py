"""curio_sft: the entropy-guided temperature, the loss against a float64 hand computation, its
properties, the reference's EMA sync, and a short run (the four tests every loss ships with)."""

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from retort.config import load_config
from retort.lm.config import TrainRun
from retort.lm.methods.curio_sft import _entropy, curio_token_loss, entropy_guided_tau
from retort.train import train


def test_tau_hits_the_target_entropy_inside_the_bounds_and_clamps_outside():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 700, generator=g, dtype=torch.float64) * torch.linspace(0.5, 6, 64, dtype=torch.float64)[:, None]
    tau = entropy_guided_tau(z, top_k=512)
    top = z.float().topk(512, -1).values
    h = _entropy(top, 1.0)
    target = h + 0.5 * torch.sigmoid(2 * (h - 1.2))
    got = _entropy(top, tau[:, None])
    inside = (tau > 1.1 + 1e-4) & (tau < 1.5 - 1e-4)
    assert inside.any()
    assert torch.allclose(got[inside], target[inside], atol=1e-4)
    assert ((tau >= 1.1) & (tau <= 1.5)).all()
    # a near-deterministic row gets tau_min
    peaked = torch.full((1, 600), -50.0)
    peaked[0, 3] = 50.0
    assert entropy_guided_tau(peaked).item() == pytest.approx(1.1)


def test_loss_equals_a_float64_hand_computation_and_its_gradient():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 13, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(7, 13, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 13, (7,), generator=g)
    tau = torch.linspace(1.1, 1.5, 7, dtype=torch.float64)
    got, nll, reg = curio_token_loss(logits, ref, labels, tau, alpha=0.7)
    lp = torch.log_softmax(logits, -1)[torch.arange(7), labels]
    lr = torch.log_softmax(ref / tau[:, None], -1)[torch.arange(7), labels]
    want = (-lp + 0.7 * 0.5 * (lp - lr) ** 2).sum()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    g1 = torch.autograd.grad(got, logits)[0]
    g2 = torch.autograd.grad(want, logits)[0]
    assert torch.allclose(g1.double(), g2, atol=1e-6)


def test_properties_zero_regulariser_when_the_reference_is_the_policy_at_tau_1():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 11, generator=g)
    labels = torch.randint(0, 11, (5,), generator=g)
    ones = torch.ones(5)
    for variant in ("token", "full_kl"):
        loss, nll, reg = curio_token_loss(logits, logits, labels, ones, variant=variant)
        assert reg.item() == pytest.approx(0.0, abs=1e-6) and loss.item() == pytest.approx(nll.item(), rel=1e-6)
    # a flatter reference (tau > 1) pulls confident tokens' log-prob down: the regulariser is > 0
    _, _, reg = curio_token_loss(logits * 5, logits * 5, labels, ones * 1.5)
    assert reg.item() > 0


def test_short_run_falls_logs_entropy_and_syncs_the_reference(tmp_path):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "c", steps=12, **{
        "method": "curio_sft", "train.lr": 0.02, "method_args.sync_every": 2}))
    train(run)
    rows = [json.loads(line) for line in (Path(run.out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(1.1 - 1e-6 <= r["tau"] <= 1.5 + 1e-6 and r["entropy"] > 0 for r in rows)


def test_reference_ema_sync_moves_toward_the_policy(tmp_path):
    from retort.lm.config import ModelConfig
    from retort.lm.methods import METHODS
    from retort.lm.methods.base import MethodContext
    from retort.lm.models import load_model
    from retort.lm.tasks import get_task

    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **{"method": "curio_sft"}))
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=3)
    m = METHODS["curio_sft"](MethodContext(run=run, task=get_task(run.task), tokenizer=tok),
                             METHODS["curio_sft"].Config(sync_every=2, mixup=0.5))
    ref = m.reference(model)  # forward 1: a copy
    p0 = next(model.parameters()).detach().clone()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    m.reference(model)  # forward 2: no sync yet
    assert torch.equal(next(ref.parameters()), p0)
    m.reference(model)  # forward 3: sync, halfway to the policy
    assert torch.allclose(next(ref.parameters()), p0 + 0.5)

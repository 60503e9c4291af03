"""The four tests every loss ships with, for every divergence: float64 reference parity (loss and
gradient, odd shapes, masks), a golden value, properties, and a short run whose loss falls."""

import math

import pytest
import torch

from reference import divergence as ref_divergence
from retort.losses import (forward_kl, generalized_jsd, masked_sum, normalised, reverse_kl, skew_forward_kl,
                           skew_reverse_kl, sparse_teacher_logprobs, tvd)
from retort.losses.divergences import DIVERGENCES

FUNCS = {
    "forward_kl": lambda s, t, T=1.0: forward_kl(s, t, temperature=T),
    "reverse_kl": lambda s, t, T=1.0: reverse_kl(s, t, temperature=T),
    "jsd": lambda s, t, T=1.0: generalized_jsd(s, t, beta=0.5, temperature=T),
    "skew_forward_kl": lambda s, t, T=1.0: skew_forward_kl(s, t, alpha=0.1, temperature=T),
    "skew_reverse_kl": lambda s, t, T=1.0: skew_reverse_kl(s, t, alpha=0.1, temperature=T),
    "tvd": lambda s, t, T=1.0: tvd(s, t, temperature=T),
}


def _logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_parity_with_float64_reference_loss_and_grad(name, temperature):
    s = _logits(3, 47, 123, seed=1).double().requires_grad_()
    t = _logits(3, 47, 123, seed=2).double()
    labels = torch.randint(0, 123, (3, 47), generator=torch.Generator().manual_seed(3))
    labels[0, :10] = -100
    labels[2, 30:] = -100
    got = FUNCS[name](s, t, temperature)
    want = ref_divergence(name, s.detach(), t, temperature=temperature)
    assert got.shape == (3, 47)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-7)
    total, n = masked_sum(got, labels)
    assert n == int((labels != -100).sum())
    assert torch.allclose(total.double(), want[labels != -100].sum(), rtol=1e-5)
    # gradient: autograd of our float32-internal function vs finite differences of the reference
    (g,) = torch.autograd.grad(total, s)
    assert torch.all(g[labels == -100] == 0)
    i, j = 1, 5
    if labels[i, j] != -100:
        eps = 1e-6
        for v in (0, 17, 122):
            plus, minus = s.detach().clone(), s.detach().clone()
            plus[i, j, v] += eps
            minus[i, j, v] -= eps
            fd = (ref_divergence(name, plus[i, j], t[i, j], temperature) -
                  ref_divergence(name, minus[i, j], t[i, j], temperature)) / (2 * eps)
            assert float(g[i, j, v]) == pytest.approx(float(fd), rel=1e-3, abs=1e-6)


def test_golden_values_on_a_hand_written_pair():
    # P_S = softmax([0, 0]) = (0.5, 0.5);  P_T = softmax([log 3, 0]) = (0.75, 0.25)
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    fkl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    rkl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert forward_kl(s, t).item() == pytest.approx(fkl, abs=1e-7)  # 0.130812...
    assert fkl == pytest.approx(0.1308120, abs=1e-6)
    assert reverse_kl(s, t).item() == pytest.approx(rkl, abs=1e-7)
    assert tvd(s, t).item() == pytest.approx(0.25, abs=1e-7)
    m = (0.625, 0.375)
    jsd = 0.5 * (0.75 * math.log(0.75 / m[0]) + 0.25 * math.log(0.25 / m[1])) + \
        0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1]))
    assert generalized_jsd(s, t, beta=0.5).item() == pytest.approx(jsd, abs=1e-7)


@pytest.mark.parametrize("name", list(FUNCS))
def test_divergence_of_a_distribution_with_itself_is_zero(name):
    x = _logits(4, 9, 31)
    assert torch.allclose(FUNCS[name](x, x), torch.zeros(4, 9), atol=1e-6)
    assert torch.all(FUNCS[name](x, _logits(4, 9, 31, seed=5)) >= -1e-6)


def test_jsd_endpoints_and_symmetry():
    s, t = _logits(5, 40, seed=1), _logits(5, 40, seed=2)
    assert torch.equal(generalized_jsd(s, t, beta=0.0), forward_kl(s, t))
    assert torch.equal(generalized_jsd(s, t, beta=1.0), reverse_kl(s, t))
    assert torch.allclose(generalized_jsd(s, t, beta=0.5), generalized_jsd(t, s, beta=0.5), atol=1e-6)
    assert torch.allclose(skew_forward_kl(s, t, alpha=0.0), forward_kl(s, t))
    assert torch.allclose(skew_reverse_kl(s, t, alpha=0.0), reverse_kl(s, t))
    assert torch.all(generalized_jsd(s, t, beta=0.5) <= math.log(2) + 1e-6)


@pytest.mark.parametrize("name", list(FUNCS))
def test_temperature_changes_the_value(name):
    s, t = _logits(3, 50, seed=1), _logits(3, 50, seed=2)
    assert not torch.allclose(FUNCS[name](s, t, 1.0), FUNCS[name](s, t, 3.0))


def test_bf16_inputs_are_upcast():
    s, t = _logits(2, 7, 64, seed=1), _logits(2, 7, 64, seed=2)
    got = forward_kl(s.bfloat16(), t.bfloat16())
    assert got.dtype == torch.float32
    assert torch.allclose(got, forward_kl(s.bfloat16().float(), t.bfloat16().float()))


def test_all_masked_batch_is_zero_not_nan():
    per_token = torch.full((2, 3), float("nan"))
    total, n = masked_sum(per_token, torch.full((2, 3), -100))
    assert n == 0 and total.item() == 0.0
    assert normalised(total, n).item() == 0.0


def test_sparse_teacher_drop_equals_dense_on_renormalised_topk_and_full_k_equals_dense():
    s, t = _logits(2, 6, 50, seed=1), _logits(2, 6, 50, seed=2)
    lt_full = torch.log_softmax(t, -1)
    vals, ids = lt_full.topk(50, -1)  # k = V: nothing is dropped
    for name, fn in DIVERGENCES.items():
        extra = {"beta": 0.5} if name == "jsd" else {"alpha": 0.1} if name.startswith("skew") else {}
        for tail in ("drop", "bucket"):
            ls, lt = sparse_teacher_logprobs(s, ids, vals, tail=tail)
            dense = fn(torch.log_softmax(s, -1), lt_full, **extra)
            assert torch.allclose(fn(ls[..., :50], lt[..., :50], **extra), dense, atol=1e-5), (name, tail)
    vals8, ids8 = lt_full.topk(8, -1)
    ls, lt = sparse_teacher_logprobs(s, ids8, vals8, tail="bucket")
    assert ls.shape[-1] == 9 and torch.allclose(lt.exp().sum(-1), torch.ones(2, 6), atol=1e-5)
    ls, lt = sparse_teacher_logprobs(s, ids8, vals8, tail="drop", temperature=2.0)
    assert torch.allclose(lt, torch.log_softmax(t.gather(-1, ids8) / 2.0, -1), atol=1e-5)
    with pytest.raises(ValueError, match="temperature=1.0"):
        sparse_teacher_logprobs(s, ids8, vals8, tail="bucket", temperature=2.0)


@pytest.mark.parametrize("name", list(FUNCS))
def test_a_short_run_makes_the_loss_fall(name):
    torch.manual_seed(0)
    teacher = _logits(16, 32, seed=7)
    student = torch.zeros(16, 32, requires_grad=True)
    opt = torch.optim.Adam([student], lr=0.1)
    losses = []
    for _ in range(60):
        loss = FUNCS[name](student, teacher).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]

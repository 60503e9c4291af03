"""The four tests every loss ships with for the classifier losses (retort.losses.classify): float64
reference parity (loss and gradient), golden values, properties (PLD's first term is CE, shift
invariance, convexity; DKD's decomposition of KD), and a short run whose loss falls."""

import math

import pytest
import torch

import reference as ref
from retort.losses.classify import dkd, ground_truth_mse, hinton_kd, plackett_luce, soft_target_kl


def _case(b=5, c=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    t = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, c, (b,), generator=g)
    return s, t, y


FUNCS = {
    "kd": (lambda s, t, y, T: hinton_kd(s, t, temperature=T), lambda s, t, y, T: ref.hinton_kd(s, t, T)),
    "dkd": (lambda s, t, y, T: dkd(s, t, y, alpha=0.7, beta=3.0, temperature=T),
            lambda s, t, y, T: ref.dkd(s, t, y, 0.7, 3.0, T)),
    "pld": (lambda s, t, y, T: plackett_luce(s, t, y, temperature=T),
            lambda s, t, y, T: ref.plackett_luce(s, t, y, T)),
    "pld_listmle": (lambda s, t, y, T: plackett_luce(s, t, y, temperature=T, weights="uniform"),
                    lambda s, t, y, T: ref.plackett_luce(s, t, y, T, "uniform")),
    # Borup & Andersen: T plays no part; the two runs of T check the same function twice
    "ground_truth_mse": (lambda s, t, y, T: ground_truth_mse(s, t, y, alpha=0.35),
                         lambda s, t, y, T: ref.ground_truth_mse(s, t, y, 0.35)),
    # a target distribution: the teacher's softmax at T=1.5 mixed with the label (the recursive/LELP form)
    "soft_target_kl": (lambda s, t, y, T: soft_target_kl(s, _mixed(t, y), temperature=T),
                       lambda s, t, y, T: ref.soft_target_kl(s, _mixed(torch.tensor([t]), torch.tensor([y]))[0]
                                                             .tolist(), T)),
}


def _mixed(t, y):
    t = torch.as_tensor(t, dtype=torch.float64)
    return 0.7 * torch.softmax(t / 1.5, -1) + 0.3 * torch.nn.functional.one_hot(torch.as_tensor(y), t.shape[-1])


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_parity_with_float64_reference_loss_and_grad(name, temperature):
    f, r = FUNCS[name]
    s, t, y = _case(7, 47)
    s.requires_grad_()
    got = f(s, t, y, temperature)
    assert got.shape == (7,)
    for i in range(7):
        want = r(s[i].tolist(), t[i].tolist(), int(y[i]), temperature)
        assert float(got[i].detach()) == pytest.approx(want, rel=1e-5, abs=1e-6)
    (g,) = torch.autograd.grad(got.sum(), s)
    i, eps = 3, 1e-6
    for v in (0, int(y[i]), 46):
        plus, minus = s.detach()[i].clone(), s.detach()[i].clone()
        plus[v] += eps
        minus[v] -= eps
        fd = (r(plus.tolist(), t[i].tolist(), int(y[i]), temperature) -
              r(minus.tolist(), t[i].tolist(), int(y[i]), temperature)) / (2 * eps)
        assert float(g[i, v]) == pytest.approx(fd, rel=1e-3, abs=1e-5)


def test_golden_values_on_hand_written_logits():
    s = torch.tensor([[0.0, 0.0, 0.0]])
    t = torch.tensor([[math.log(2.0), 0.0, 0.0]])  # p_T = (0.5, 0.25, 0.25), p_S uniform
    y = torch.tensor([0])
    kl = 0.5 * math.log(1.5) + 2 * 0.25 * math.log(0.75)
    assert hinton_kd(s, t, temperature=1.0).item() == pytest.approx(kl, abs=1e-7)
    assert kl == pytest.approx(0.0588915, abs=1e-6)
    # DKD: binary (0.5, 0.5) vs (1/3, 2/3); the non-target parts are both uniform, so NCKD = 0
    tckd = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))
    assert dkd(s, t, y, alpha=1.0, beta=8.0, temperature=1.0).item() == pytest.approx(tckd, abs=1e-7)
    # PLD with pi* = (0, 1, 2) (ties keep index order): weights (0.5, 0.25, 0.25), uniform student
    pld = 0.5 * math.log(3) + 0.25 * math.log(2) + 0.25 * 0.0
    assert plackett_luce(s, t, y).item() == pytest.approx(pld, abs=1e-7)
    assert pld == pytest.approx(0.7225929, abs=1e-6)
    # Borup: p_S = 1/3 each, label 0, p_T = (0.5, 0.25, 0.25): alpha*(4/9+1/9+1/9)/3 + (1-alpha)*(1/36+2/144)/3
    gt, sd = (4 / 9 + 2 / 9) / 3, (1 / 36 + 2 / 144) / 3
    assert ground_truth_mse(s, t, y, alpha=0.25).item() == pytest.approx(0.25 * gt + 0.75 * sd, abs=1e-7)
    assert soft_target_kl(s, torch.tensor([[0.5, 0.5, 0.0]])).item() == pytest.approx(math.log(1.5), abs=1e-7)


def test_pld_first_term_is_cross_entropy_and_shift_invariant():
    s, t, y = _case(6, 10, seed=4)
    ce = torch.nn.functional.cross_entropy(s, y, reduction="none")
    assert torch.allclose(plackett_luce(s, t, y, weights="ce").double(), ce, atol=1e-5)
    for w in ("teacher", "uniform"):
        assert torch.allclose(plackett_luce(s + 7.5, t, y, weights=w), plackett_luce(s, t, y, weights=w), atol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        plackett_luce(s, t, y, weights="softmax")


def test_pld_is_convex_along_random_lines():
    s, t, y = _case(4, 9, seed=5)
    g = torch.Generator().manual_seed(6)
    for _ in range(20):
        d = torch.randn(s.shape, generator=g, dtype=torch.float64)
        vals = [plackett_luce(s + a * d, t, y).double() for a in (-1.0, 0.0, 1.0)]
        assert torch.all(vals[0] + vals[2] - 2 * vals[1] >= -1e-5)


def test_pld_ranking_puts_the_label_first_then_descending_teacher():
    # teacher prefers 2 > 1 > 0 > 3, label 3: pi* = (3, 2, 1, 0); a student ranking exactly so beats its reverse
    t = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    y = torch.tensor([3])
    good = torch.tensor([[1.0, 2.0, 3.0, 4.0]]) * 3
    bad = torch.tensor([[4.0, 3.0, 2.0, 1.0]]) * 3
    assert plackett_luce(good, t, y).item() < plackett_luce(bad, t, y).item()


def test_dkd_decomposes_kd_and_vanishes_on_equal_logits():
    s, t, y = _case(8, 11, seed=7)
    T = 2.0
    kd = hinton_kd(s, t, temperature=T)
    tckd = dkd(s, t, y, alpha=1.0, beta=0.0, temperature=T)
    nckd = dkd(s, t, y, alpha=0.0, beta=1.0, temperature=T)
    b_t = torch.softmax(t / T, -1).gather(1, y.view(-1, 1)).squeeze(1)
    assert torch.allclose(kd.double(), tckd + (1 - b_t) * nckd, atol=1e-5)  # eq. 4 of the paper
    for f in (hinton_kd(t, t, temperature=T), dkd(t, t, y, temperature=T),
              soft_target_kl(t, torch.softmax(t / T, -1), temperature=T)):
        assert torch.allclose(f, torch.zeros_like(f), atol=1e-6)
    assert not torch.allclose(hinton_kd(s, t, temperature=1.0), hinton_kd(s, t, temperature=4.0))


def test_dkd_gradient_is_finite_with_a_confident_teacher():
    s, t, y = _case(4, 6, seed=8)
    t = t.clone()
    t[torch.arange(4), y] = 200.0  # the rest underflow in p_T
    s = s.float().requires_grad_()
    loss = dkd(s, t.float(), y).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", list(FUNCS))
def test_a_short_run_makes_the_loss_fall(name):
    f, _ = FUNCS[name]
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    teacher = torch.nn.Linear(8, 5)
    with torch.no_grad():
        t = teacher(x) * 3
    y = t.argmax(-1)
    student = torch.nn.Linear(8, 5)
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        loss = f(student(x), t, y, 2.0).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_ground_truth_mse_ends_are_the_labels_and_the_teacher():
    s, t, y = _case(6, 7, seed=9)
    onehot_logits = torch.nn.functional.one_hot(y, 7).double() * 1e4
    assert torch.allclose(ground_truth_mse(s, t, y, alpha=1.0), ground_truth_mse(s, onehot_logits, y, alpha=0.0))
    assert torch.allclose(ground_truth_mse(t, t, y, alpha=0.0), torch.zeros(6), atol=1e-7)

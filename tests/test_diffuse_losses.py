"""The diffusion losses' four tests (every loss ships with them): parity with the float64 reference (value and
gradient, odd shapes), a golden number, properties (the DM sign: a descent step moves x toward the
real prediction and away from the fake one; zero when the scores agree), and a short training run
that makes the loss fall (test_diffuse.py trains through the CLI)."""

import pytest
import torch

import reference
from retort.losses.diffuse import (consistency, distribution_matching, edm_denoising, f_weight, gan_discriminator,
                                   gan_generator, score_identity)


@pytest.mark.parametrize("shape", [(5, 2), (3, 1, 7, 9), (2, 3, 5, 4)])
def test_dm_loss_matches_the_reference_value_and_gradient(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    real = torch.randn(*shape, generator=g, dtype=torch.float64)
    fake = torch.randn(*shape, generator=g, dtype=torch.float64)
    ours = distribution_matching(x, real, fake)
    ref = reference.distribution_matching(x, real, fake)
    assert torch.allclose(ours.double(), ref, rtol=1e-5)
    (g1,) = torch.autograd.grad(ours.sum(), x)
    (g2,) = torch.autograd.grad(ref.sum(), x)
    assert torch.allclose(g1.double(), g2, rtol=1e-5, atol=1e-7)


def test_dm_loss_golden_number():
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    real = torch.tensor([[0.0, 0.0]])   # w = mean |x - real| = 1.5
    fake = torch.tensor([[3.0, -1.5]])  # grad = (3, -1.5) / 1.5 = (2, -1)
    loss = distribution_matching(x, real, fake)
    assert loss.item() == pytest.approx(0.5 * (4 + 1) / 2)
    loss.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([[1.0, -0.5]]))  # grad / dims


def test_dm_loss_descends_toward_the_real_prediction():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, generator=g, requires_grad=True)
    real = torch.randn(64, 2, generator=g)
    fake = x.detach() + 0.3 * torch.randn(64, 2, generator=g)  # the fake score sits near the samples
    before = (x.detach() - real).norm(dim=1).mean()
    distribution_matching(x, real, fake).sum().backward()
    after = (x.detach() - 0.05 * x.grad - real).norm(dim=1).mean()
    assert after < before
    assert distribution_matching(x, real, real).abs().max() == 0  # scores agree: nothing to match


def test_dm_loss_zeroes_non_finite_directions():
    x = torch.zeros(1, 2, requires_grad=True)
    loss = distribution_matching(x, torch.zeros(1, 2), torch.ones(1, 2))  # w = 0: grad = inf -> 0
    assert torch.isfinite(loss).all() and loss.item() == 0


def test_edm_denoising_reference_and_golden():
    g = torch.Generator().manual_seed(2)
    pred, x0 = torch.randn(4, 1, 3, 5, generator=g), torch.randn(4, 1, 3, 5, generator=g)
    sigma = torch.tensor([0.01, 0.5, 2.0, 80.0])
    assert torch.allclose(edm_denoising(pred, x0, sigma, 0.5).double(), reference.edm_denoising(pred, x0, sigma, 0.5),
                          rtol=1e-5)
    # lambda(0.5) with sd 0.5 = (0.25 + 0.25) / 0.0625 = 8; error 1 in every dim
    assert edm_denoising(torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([0.5]), 0.5).item() == pytest.approx(8.0)


def test_consistency_and_gan_losses():
    a, b = torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)
    assert consistency(a, b).item() == pytest.approx(12.5)                      # mean of 9, 16
    assert consistency(a, b, c=1.0).item() == pytest.approx(((12.5 + 1) ** 0.5) - 1)
    assert consistency(a, a, c=0.1).item() == pytest.approx(0.0)
    assert gan_generator(torch.tensor([0.0])).item() == pytest.approx(0.6931, abs=1e-4)  # softplus(0) = ln 2
    # a perfect discriminator (fake -> -inf, real -> +inf) has loss -> 0
    assert gan_discriminator(torch.tensor([-30.0]), torch.tensor([30.0])).item() < 1e-12


def test_score_identity_golden_gradient_and_zero():
    x = torch.tensor([[1.0, -1.0]], requires_grad=True)
    d_t = torch.tensor([[2.0, 0.0]])
    d_f = torch.tensor([[1.5, 1.0]], requires_grad=True)
    w = torch.tensor([2.0])
    loss = score_identity(d_t, d_f, x, w)  # mean((0.5, -1) * (0.5, 2)) / 2 = mean(0.25, -2) / 2
    assert loss.item() == pytest.approx(-0.4375)
    loss.sum().backward()
    assert torch.allclose(x.grad, -(d_t - d_f.detach()) / 2 / 2)   # d/dx_g = -(D_T - D_F) / (dims w)
    assert score_identity(d_t, d_t, x.detach(), w).abs().item() == 0


def test_f_weights_are_r2_f2():
    r = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    assert torch.equal(f_weight("rkl", r), torch.ones(3, dtype=torch.float64))
    assert torch.equal(f_weight("fkl", r), r)
    # h = r^2 f''(r): JS's f(r) = r log r - (r + 1) log((r + 1) / 2), f'' = 1 / r - 1 / (r + 1)
    assert torch.allclose(f_weight("js", r), r**2 * (1 / r - 1 / (r + 1)))
    assert torch.allclose(f_weight("chi2", r), r**2 * 2)          # f = (r - 1)^2
    with pytest.raises(ValueError, match="f-divergence"):
        f_weight("tv", r)

"""The diffusion track's exact teachers and metrics: the closed-form denoiser, score and velocity
of 2-D mixtures against autograd and Monte Carlo, and the metrics on known answers."""

import math

import pytest
import torch

from retort.diffuse.metrics import mmd2, mode_stats, sliced_wasserstein, swd_ratio
from retort.diffuse.mixtures import MIXTURES, Mixture, class_mixture, grid, ring, swiss_roll


def _points(n=64, seed=0, scale=4.0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


@pytest.mark.parametrize("name", list(MIXTURES))
@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_score_is_the_gradient_of_the_log_density(name, sigma):
    m = MIXTURES[name]()
    x = _points().requires_grad_()
    (g,) = torch.autograd.grad(m.log_prob(x, sigma).sum(), x)
    assert torch.allclose(m.score(x.detach(), sigma), g, rtol=1e-6, atol=1e-8)


def test_data_score_and_single_gaussian_denoiser():
    m = ring(k=1, radius=1.0, std=0.5)
    x = _points(8)
    # one Gaussian N(mu, s^2): D(x, sigma) = (sigma^2 mu + s^2 x) / (s^2 + sigma^2)
    want = (0.3**2 * m.means + 0.25 * x) / (0.25 + 0.09)
    assert torch.allclose(m.denoise(x, 0.3), want)
    x.requires_grad_()
    (g,) = torch.autograd.grad(m.log_prob(x).sum(), x)
    assert torch.allclose(m.score(x.detach(), 0.0), g)


@pytest.mark.parametrize("t", [0.2, 0.6, 0.9])
def test_velocity_matches_a_monte_carlo_posterior(t):
    m = ring(skew=0.6)
    gen = torch.Generator().manual_seed(1)
    x0 = m.sample(400_000, gen)
    # typical points of the forward process (where the importance weights below have many effective samples)
    x_t = (1 - t) * m.sample(3, torch.Generator().manual_seed(2)) + t * torch.randn(
        3, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # p(x0 | x_t) ∝ p(x0) N(x_t; (1 - t) x0, t^2 I): self-normalised weights on prior samples
    logw = -((x_t[:, None, :] - (1 - t) * x0[None]) ** 2).sum(-1) / (2 * t**2)
    w = torch.softmax(logw, -1)
    e_x0 = w @ x0
    e_eps = (x_t - (1 - t) * e_x0) / t
    assert torch.allclose(m.velocity(x_t, t), e_eps - e_x0, atol=0.03)
    # and the spec's identity v = (E[eps | x_t] - x_t) / (1 - t)
    assert torch.allclose(m.velocity(x_t, t), (e_eps - x_t) / (1 - t), atol=0.03)


def test_the_mixtures_are_what_they_say():
    r = ring(skew=0.6)
    assert r.K == 8 and torch.allclose(r.means.norm(dim=1), torch.full((8,), 4.0, dtype=torch.float64))
    assert r.weights[1] / r.weights[0] == pytest.approx(0.6)
    g = grid()
    assert g.K == 25 and set(g.means[:, 0].tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    c = class_mixture()
    assert c.K == 30 and c.condition(3).K == 3 and float(c.condition(3).weights.sum()) == pytest.approx(1.0)
    s = swiss_roll()
    assert s.K == 100 and s.means.norm(dim=1).max() == pytest.approx(4.5 * math.pi / 3)
    x, k = r.sample(20_000, torch.Generator().manual_seed(0), return_component=True)
    assert abs(float((k == 0).double().mean()) - float(r.weights[0])) < 0.01


def test_sliced_wasserstein_known_answers():
    a = _points(2000, seed=3)
    shift = torch.tensor([3.0, 0.0], dtype=torch.float64)
    # a shift d moves every projection by d.u: W2 = |d.u| per direction, mean |d| * 2 / pi over directions
    assert sliced_wasserstein(a + shift, a, n_directions=4096) == pytest.approx(3.0 * 2 / math.pi, rel=0.02)
    assert sliced_wasserstein(a, a) == 0.0
    assert sliced_wasserstein(a, a[:1000]) < 0.2  # unequal sizes compared at matched quantiles
    m = ring()
    t1, t2, s = (m.sample(5000, torch.Generator().manual_seed(i)) for i in range(3))
    r = swd_ratio(s, t1, t2)
    assert 0.5 < r["swd_ratio"] < 2.0  # a fresh teacher sample sits at the noise floor
    collapsed = m.means[0].expand(5000, 2) + 0.01 * _points(5000, seed=4)
    assert swd_ratio(collapsed, t1, t2)["swd_ratio"] > 10


def test_mmd2_is_unbiased_and_sees_a_shift():
    g = torch.Generator().manual_seed(5)
    vals = [mmd2(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g)) for _ in range(30)]
    assert abs(sum(vals) / len(vals)) < 3e-3  # unbiased: zero on average, negative draws allowed
    assert min(vals) < 0
    assert mmd2(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) + 2) > 0.3
    # by hand: a = {0}, {1}... two points per side, bandwidth 1
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    k = lambda d2: math.exp(-d2 / 2)  # noqa: E731
    want = (2 * k(1)) / 2 + (2 * k(5)) / 2 - 2 * (k(1) + k(4) + k(2) + k(1)) / 4
    assert mmd2(a, b, bandwidth=1.0) == pytest.approx(want, abs=1e-12)


def test_mode_recall_and_precision():
    m = ring()
    per = 100
    x = torch.cat([m.means[i].expand(per, 2) for i in range(6)] + [torch.full((200, 2), 50.0, dtype=torch.float64)])
    s = mode_stats(x, m)
    assert s["modes_covered"] == 6 and s["recall"] == 0.75 and s["precision"] == pytest.approx(600 / 800)
    assert "light_recall" not in s  # equal weights: no lightest modes


def test_light_mode_recall_and_mass_on_the_skewed_ring():
    m = ring(skew=0.6)
    n = 10_000
    expected = (m.weights * n).round().long()
    # every mode at its weight except the lightest (index 7), left empty, and the next (6), at half
    counts = expected.clone()
    counts[7], counts[6] = 0, expected[6] // 2
    x = torch.cat([m.means[i].expand(int(c), 2) for i, c in enumerate(counts)])
    s = mode_stats(x, m)
    assert s["light_recall"] == pytest.approx(2 / 3)  # modes 5, 6 covered (6 holds 50% >= 20%), 7 not
    want = float((counts[5:].sum()) / (m.weights[5:].sum() * len(x)))
    assert s["light_mass"] == pytest.approx(want, rel=1e-9)
    assert 0.4 < s["light_mass"] < 0.7


def test_first_step_predictions_of_a_single_gaussian_known_answer():
    """DT-visualisation on N(mu, s^2 I): the first prediction is D(sigma z) = (sigma^2 mu + s^2 sigma z) / (s^2 +
    sigma^2), so its spread is s^2 sigma / (s^2 + sigma^2) times the noises' mean pairwise distance, and with mu the
    only real sample its distance to the data is known too (both per coordinate)."""
    from types import SimpleNamespace

    from retort.diffuse.evaluate import first_step
    from retort.diffuse.nets import ExactDenoiser

    s, sigma, n = 0.5, 20.0, 16
    m = Mixture(torch.tensor([[1.0, 0.0]]), torch.tensor([s]), torch.tensor([1.0]))
    data = SimpleNamespace(kind="points", shape=(2,), labels=lambda n, g: None)
    got = first_step(ExactDenoiser(m), data, SimpleNamespace(x=m.means.clone()), sigma=sigma, n=n, seed=3)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(3))
    pred = (sigma**2 * m.means + s**2 * sigma * z) / (s**2 + sigma**2)
    pair = torch.cdist(z, z).sum() / (n * (n - 1))
    assert got["spread"] == pytest.approx(float(s**2 * sigma / (s**2 + sigma**2) * pair) / math.sqrt(2), abs=2e-4)
    assert got["to_data"] == pytest.approx(float((pred - m.means).norm(dim=1).mean()) / math.sqrt(2), abs=2e-4)
    assert len(got["points"]) == n and got["points"][0] == pytest.approx(pred[0].tolist(), abs=6e-4)

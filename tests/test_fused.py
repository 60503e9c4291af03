"""The fused chunked path equals the plain full-logits computation, for every divergence, in loss
and in the gradients of hidden states and weight (fp32 and bf16; masks; tied weights; CE term)."""

import pytest
import torch

from retort.losses import masked_sum
from retort.losses.divergences import DIVERGENCES, _logp
from retort.losses.fused import fused_linear_divergence

NAMES = list(DIVERGENCES)


def plain(hidden, weight, t_logits, labels, name, *, beta=0.5, alpha=0.1, T=1.0, kd_weight=1.0, ce_weight=0.0,
          vocab=None):
    vocab = vocab or weight.shape[0]
    z = (hidden @ weight.T)[:, :vocab]
    ls, lt = _logp(z, T), _logp(t_logits[:, :vocab], T)
    extra = {"jsd": (beta,), "skew_forward_kl": (alpha,), "skew_reverse_kl": (alpha,)}.get(name, ())
    kd, _ = masked_sum(DIVERGENCES[name](ls, lt, *extra), labels)
    ce = torch.nn.functional.cross_entropy(z.float(), labels, ignore_index=-100, reduction="sum")
    return kd_weight * kd + ce_weight * ce


def _case(n=37, h=24, v=113, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g)).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.3).to(dtype).requires_grad_()
    t_hidden = torch.randn(n, 16, generator=g).to(dtype)
    t_weight = (torch.randn(v, 16, generator=g) * 0.5).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::5] = -100
    return hidden, weight, t_hidden, t_weight, labels


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ce_weight,T", [(0.0, 1.5), (0.7, 1.5), (0.7, 1.0)])
def test_fused_equals_plain_fp32(name, ce_weight, T):
    hidden, weight, th, tw, labels = _case()
    t_logits = th @ tw.T
    want = plain(hidden, weight, t_logits, labels, name, T=T, kd_weight=0.8, ce_weight=ce_weight)
    gh, gw = torch.autograd.grad(want, [hidden, weight])
    for teacher in ({"teacher_logits": t_logits}, {"teacher_hidden": th, "teacher_weight": tw}):
        got, kd, ce = fused_linear_divergence(hidden, weight, labels, divergence=name, temperature=T,
                                              kd_weight=0.8, ce_weight=ce_weight, chunk=8, **teacher)
        fh, fw = torch.autograd.grad(got, [hidden, weight])
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
        assert torch.allclose(fh, gh, rtol=1e-4, atol=1e-5)
        assert torch.allclose(fw, gw, rtol=1e-4, atol=1e-5)
        assert torch.all(fh[labels == -100] == 0)


@pytest.mark.parametrize("name", NAMES)
def test_fused_equals_plain_bf16(name):
    hidden, weight, th, tw, labels = _case(dtype=torch.bfloat16)
    t_logits = th @ tw.T
    want = plain(hidden, weight, t_logits, labels, name)
    gh, gw = torch.autograd.grad(want, [hidden, weight])
    got, _, _ = fused_linear_divergence(hidden, weight, labels, teacher_hidden=th, teacher_weight=tw,
                                        divergence=name, chunk=16)
    fh, fw = torch.autograd.grad(got, [hidden, weight])
    assert fh.dtype == torch.bfloat16 and fw.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    assert torch.allclose(fh.float(), gh.float(), rtol=5e-2, atol=5e-3)
    assert torch.allclose(fw.float(), gw.float(), rtol=5e-2, atol=5e-3)


def test_chunk_size_does_not_change_the_result_and_jsd_params_pass_through():
    hidden, weight, th, tw, labels = _case()
    a = fused_linear_divergence(hidden, weight, labels, teacher_hidden=th, teacher_weight=tw, divergence="jsd",
                                beta=0.2, chunk=3)[0]
    b = fused_linear_divergence(hidden, weight, labels, teacher_hidden=th, teacher_weight=tw, divergence="jsd",
                                beta=0.2, chunk=1000)[0]
    assert torch.allclose(a, b, rtol=1e-6)
    c = plain(hidden, weight, th @ tw.T, labels, "jsd", beta=0.2)
    assert torch.allclose(a, c, rtol=1e-5)


def test_padded_vocabularies_compare_shared_columns_only():
    hidden, weight, th, tw, labels = _case(v=113)
    labels[labels >= 100] = 3
    padded = torch.cat([weight.detach(), torch.randn(15, weight.shape[1])]).requires_grad_()  # 128 rows
    got, _, _ = fused_linear_divergence(hidden, padded, labels, teacher_hidden=th, teacher_weight=tw[:100],
                                        vocab=100, ce_weight=1.0)
    want = plain(hidden, padded, th @ tw[:100].T, labels, "forward_kl", ce_weight=1.0, vocab=100)
    assert torch.allclose(got, want, rtol=1e-5)
    (gw,) = torch.autograd.grad(got, [padded])
    assert gw.shape == padded.shape and torch.all(gw[100:] == 0)


def test_tied_embeddings_receive_the_gradient():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 12)
    ids = torch.randint(0, 50, (2, 9))
    hidden = emb(ids).reshape(-1, 12)
    labels = torch.randint(0, 50, (18,))
    t_logits = torch.randn(18, 50)
    loss, _, _ = fused_linear_divergence(hidden, emb.weight, labels, teacher_logits=t_logits, divergence="reverse_kl")
    loss.backward()
    g_fused = emb.weight.grad.clone()
    emb.weight.grad = None
    hidden = emb(ids).reshape(-1, 12)
    plain(hidden, emb.weight, t_logits, labels, "reverse_kl").backward()
    # both are float32 computations ~1e-5 from the float64 value (measured); compare at that level
    assert torch.allclose(g_fused, emb.weight.grad, rtol=1e-4, atol=5e-5)


def test_all_masked_gives_zero_and_zero_grads():
    hidden, weight, th, tw, labels = _case()
    labels[:] = -100
    loss, kd, ce = fused_linear_divergence(hidden, weight, labels, teacher_hidden=th, teacher_weight=tw, ce_weight=1.0)
    assert loss.item() == 0.0
    gh, gw = torch.autograd.grad(loss, [hidden, weight])
    assert torch.all(gh == 0) and torch.all(gw == 0)


def test_under_bf16_autocast_with_fp32_weights():
    """Mixed precision as the loop runs it: bf16 activations from autocast, fp32 parameters."""
    hidden, weight, th, tw, labels = _case()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h16 = hidden * 1.0  # a float op under autocast keeps fp32; cast like a bf16 layer output
        h16 = h16.to(torch.bfloat16)
        loss, _, _ = fused_linear_divergence(h16, weight, labels, teacher_hidden=th.bfloat16(), teacher_weight=tw,
                                             divergence="jsd", ce_weight=0.5)
        loss.backward()
    assert weight.grad is not None and weight.grad.dtype == torch.float32 and torch.isfinite(weight.grad).all()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    want = plain(hidden.detach().bfloat16().float(), weight.detach(), (th.bfloat16().float() @ tw.T), labels, "jsd",
                 ce_weight=0.5)
    assert loss.item() == pytest.approx(want.item(), rel=3e-2)


@pytest.mark.parametrize("name,temperature", [("jsd", 1.0), ("reverse_kl", 1.3), ("tvd", 1.0)])
def test_row_weights_scale_each_token_of_both_terms(name, temperature):
    hidden, weight, th, tw, labels = _case()
    t_logits = th @ tw.T
    w = torch.rand(labels.shape[0], generator=torch.Generator().manual_seed(3)) * 2 - 0.5  # signed, like advantages
    w[1] = 0.0  # a gated-out row
    z = hidden @ weight.T
    ls, lt = _logp(z, temperature), _logp(t_logits, temperature)
    extra = (0.5,) if name == "jsd" else ()
    per_kd = DIVERGENCES[name](ls, lt, *extra)
    per_ce = torch.nn.functional.cross_entropy(z, labels, ignore_index=-100, reduction="none")
    mask = labels != -100
    want = ((0.8 * per_kd + 0.6 * per_ce) * w)[mask].sum()
    gh, gw = torch.autograd.grad(want, [hidden, weight])
    got, kd, ce = fused_linear_divergence(hidden, weight, labels, teacher_logits=t_logits, divergence=name,
                                          temperature=temperature, kd_weight=0.8, ce_weight=0.6, chunk=8, row_weight=w)
    fh, fw = torch.autograd.grad(got, [hidden, weight])
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.allclose(kd, (per_kd * w)[mask].sum(), rtol=1e-5, atol=1e-5)
    assert torch.allclose(fh, gh, rtol=1e-4, atol=1e-5) and torch.allclose(fw, gw, rtol=1e-4, atol=1e-5)
    assert torch.all(fh[1] == 0)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_jsd_ends_and_a_scaled_loss_backpropagate_like_plain(beta):
    """beta 0 / 1 run the forward / reverse KL paths in fewer buffers; the upstream gradient (a loss
    divided by its token count) scales the saved gradients in place, so a second backward is refused."""
    hidden, weight, th, tw, labels = _case(seed=3)
    want = plain(hidden, weight, th @ tw.T, labels, "jsd", beta=beta, ce_weight=0.4) / 29
    want.backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    got = fused_linear_divergence(hidden, weight, labels, teacher_hidden=th, teacher_weight=tw, divergence="jsd",
                                  beta=beta, ce_weight=0.4, chunk=7)[0] / 29
    got.backward(retain_graph=True)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(hidden.grad, gh, rtol=1e-4, atol=1e-6)
    assert torch.allclose(weight.grad, gw, rtol=1e-4, atol=1e-6)
    with pytest.raises(RuntimeError, match="backward runs once"):
        got.backward()

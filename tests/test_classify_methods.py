"""Numerical checks of the classifier-track methods that have closed forms or exact properties:
Borup & Andersen's kernel-ridge self-distillation (the authors' sinusoid numbers, the eigen
recursion and its limit, the optimal alpha vs a grid search, the two-run estimate), the anchored
recursion of recursive meta-distillation, LELP's projection and targets, and the chains of
`retort generations` through the CLI."""

import json

import numpy as np
import pytest
import torch

from retort.classify import models
from retort.classify.methods.borup import (alpha_hat, eigen_recursion, krr_self_distillation, optimal_alpha,
                                           rbf_kernel)
from retort.classify.methods.lelp import LelpProjection, subclass_targets
from retort.classify.methods.recursive import anchored_chain, kl, temperature_smoothing
from retort.cli import main

# the noisy sine of Mobahi et al. (2020) as Borup & Andersen's toy_example.ipynb fixes it
X = np.arange(0, 1.1, 0.1).reshape(-1, 1)
Y = np.array([0.38476636465198066, 1.2333967683416893, 1.33232242218057, 0.69201594888895180, -0.29756145531871736,
              -0.24189291901377769, -0.7964485769175675, -0.9616480167034174, -0.49672509509916934,
              -0.3469066003991437, 0.5589512650600734])
XE = np.arange(0, 1.01, 0.01).reshape(-1, 1)
Z = np.sin(2 * np.pi * XE[:, 0])


def _mse(pred):
    return float(np.mean((pred - Z) ** 2))


@pytest.mark.parametrize("alpha,steps,limit", [
    (0.0, [0.16477, 0.15076, 0.14915, 0.15561, 0.16735, 0.18251], 0.49505),
    (0.35, [0.16477, 0.15424, 0.15089, 0.14983, 0.14954, 0.14948], 0.14959)])
def test_borup_sinusoid_numbers_reproduce(alpha, steps, limit):
    preds, lim = krr_self_distillation(X, Y, XE, alpha=alpha, steps=6, gamma=80, lam=0.2)
    assert [round(_mse(p), 5) for p in preds] == steps
    assert round(_mse(np.zeros_like(Z) if lim is None else lim), 5) == limit


def test_borup_eigen_recursion_matches_the_direct_fit_and_its_limit():
    K = rbf_kernel(X, X, 80)
    d, V = np.linalg.eigh(K)
    A = K @ np.linalg.inv(K + 0.2 * np.eye(11))
    bs, b_inf = eigen_recursion(K, 0.2, 0.35, 60)
    fitted = Y
    for t, b in enumerate(bs[:6]):
        fitted = A @ (Y if t == 0 else 0.35 * Y + 0.65 * fitted)
        assert np.allclose(V @ np.diag(b) @ V.T @ Y, fitted, atol=1e-10)
    assert np.allclose(bs[-1], b_inf, atol=1e-9)
    small, large = np.argmin(d), np.argmax(d)
    assert bs[5][small] / bs[0][small] < bs[5][large] / bs[0][large]  # small eigenvalues shrink faster


def test_borup_optimal_alpha_matches_a_grid_search():
    K = rbf_kernel(X, X, 80)
    inv = np.linalg.inv(K + 0.2 * np.eye(11))
    A, Ax = K @ inv, rbf_kernel(XE, X, 80) @ inv
    prev, got = A @ Y, []
    grid = np.linspace(0, 1, 1001)
    for _ in range(5):
        a = optimal_alpha(Ax, Y, prev, Z)
        best = grid[int(np.argmin([_mse(Ax @ (g * Y + (1 - g) * prev)) for g in grid]))]
        assert abs(a - best) <= 1e-3
        got.append(a)
        prev = A @ (a * Y + (1 - a) * prev)
    assert got[0] == 0.0 and round(got[1], 3) == 0.135 and all(abs(a - 0.336) < 2e-3 for a in got[2:])


def test_alpha_hat_recovers_the_alpha_of_an_affine_family():
    g = torch.Generator().manual_seed(0)
    f0, f1 = torch.rand(50, 4, generator=g), torch.rand(50, 4, generator=g)
    assert alpha_hat(f0, f1, f0 + 0.3 * (f1 - f0)) == pytest.approx(0.3, abs=1e-6)
    assert alpha_hat(f0, f1, f0 + 1.7 * (f1 - f0)) == 1.0 and alpha_hat(f0, f0, f1) == 0.0


def _p_T(seed=0):
    rng = np.random.default_rng(seed)
    z = 2 * rng.standard_normal(10)
    return np.exp(z - z.max()) / np.exp(z - z.max()).sum()


def test_anchored_recursion_contracts_with_an_exact_distill():
    p_T = _p_T()
    p0 = np.random.default_rng(1).dirichlet(np.ones(10))
    chain = anchored_chain(p_T, lambda p: p, 0.3, 20, p0)
    kls = [kl(p, p_T) for p in chain]
    assert all(b <= 0.7 * a + 1e-12 for a, b in zip(kls, kls[1:]))


def test_anchored_recursion_with_a_lossy_distill():
    p_T, distill = _p_T(), temperature_smoothing(2.0)
    uniform = np.full(10, 0.1)
    drift = anchored_chain(p_T, distill, 0.0, 200)[-1]
    assert kl(drift, p_T) == pytest.approx(kl(uniform, p_T), abs=1e-6)  # a=0 drifts to Distill's fixed point
    limits = {}
    for a in (0.1, 0.2, 0.5):
        ends = [anchored_chain(p_T, distill, a, 200, np.random.default_rng(s).dirichlet(np.ones(10)))[-1]
                for s in range(5)]
        assert max(np.abs(e - ends[0]).sum() for e in ends) < 1e-9  # the limit does not depend on p_0
        chain = anchored_chain(p_T, distill, a, 12, np.random.default_rng(9).dirichlet(np.ones(10)))
        errs = [np.abs(p - ends[0]).sum() for p in chain]
        assert all(e1 <= (1 - a) * e0 + 1e-12 for e0, e1 in zip(errs, errs[1:]) if e0 > 1e-9)  # Lip <= 1 here
        limits[a] = kl(ends[0], p_T)
    assert kl(uniform, p_T) > limits[0.1] > limits[0.2] > limits[0.5] > 0
    # this draw's values (the spec's 0.832 / 0.422 / 0.122 came from a draw it did not record)
    assert [round(kl(uniform, p_T), 3), round(limits[0.2], 3), round(limits[0.5], 3)] == PINNED


PINNED = [0.924, 0.477, 0.142]  # p_T = softmax(2 z), z ~ default_rng(0).standard_normal(10)


def test_lelp_projection_and_targets():
    g = torch.Generator().manual_seed(0)
    C, D, S, N = 3, 12, 4, 300
    W = torch.randn(C, D, generator=g)
    h = torch.randn(N, D, generator=g) * torch.linspace(0.2, 3, D)
    y = torch.randint(0, C, (N,), generator=g)
    proj = LelpProjection(h, y, W, S, null_space=True, seed=5)
    assert torch.allclose(W @ proj.P, torch.zeros(C, D), atol=1e-5)  # the logit directions are removed
    for c in range(C):
        U = proj.U[c]
        assert torch.allclose(U.T @ U, torch.eye(S), atol=1e-5)  # orthonormal directions
        assert torch.allclose(proj(h[y == c])[:, c].std(0), torch.ones(S), atol=1e-4)  # standardised per class
    assert torch.equal(LelpProjection(h, y, W, S, True, 5).U, proj.U)  # one draw per seed
    assert not torch.equal(LelpProjection(h, y, W, S, True, 6).U, proj.U)
    z = torch.randn(N, C, generator=g)
    t = subclass_targets(proj(h), z, tau=2.0, beta=0.5)
    assert t.shape == (N, C * S) and torch.allclose(t.sum(-1), torch.ones(N))
    assert torch.allclose(t.view(N, C, S).sum(-1), torch.softmax(z / 2.0, -1), atol=1e-6)  # class marginal kept
    with pytest.raises(Exception, match="more subclasses"):
        LelpProjection(h, y, W, D + 1, True, 0)


def test_chains_through_the_cli(tmp_path):
    base = ["track=classify", "task.name=digits-3", "student.name=mlp:16", "train.steps=30", "train.eval_every=0",
            "train.log_every=30"]
    assert main(["train", *base, "method=ce", f"out={tmp_path / 't'}"]) == 0
    teacher = tmp_path / "t" / "model"
    assert main(["generations", "2", *base, "method=recursive", "method_args.a=0.5", f"teacher.name={teacher}",
                 f"out={tmp_path / 'rec'}"]) == 0
    res = json.loads((tmp_path / "rec" / "generations.json").read_text())
    assert [r["generation"] for r in res["generations"]] == [1, 2]
    assert res["generations"][1]["teacher"] == str(tmp_path / "rec" / "gen-1" / "model")
    cfg = (tmp_path / "rec" / "gen-2" / "config.yaml").read_text()
    assert f"anchor: {teacher}" in cfg and "seed: 2" in cfg
    mtime = (tmp_path / "rec" / "gen-1" / "summary.json").stat().st_mtime
    assert main(["generations", "2", *base, "method=recursive", "method_args.a=0.5", f"teacher.name={teacher}",
                 f"out={tmp_path / 'rec'}"]) == 0  # a rerun trains nothing again
    assert (tmp_path / "rec" / "gen-1" / "summary.json").stat().st_mtime == mtime
    assert main(["generations", "1", *base, "method=borup", f"teacher.name={teacher}", "--alpha-hat",
                 f"out={tmp_path / 'b'}"]) == 0
    row = json.loads((tmp_path / "b" / "generations.json").read_text())["generations"][0]
    assert 0 <= row["alpha_hat"] <= 1 and row["alpha"] == row["alpha_hat"]
    assert (tmp_path / "b" / "gen-1-alpha0").is_dir() and (tmp_path / "b" / "gen-1-alpha1").is_dir()
    assert main(["generations", "1", *base, "method=ce", f"out={tmp_path / 'c'}"]) == 2


def test_generations_writes_only_into_a_new_or_empty_directory_or_its_own_chain(tmp_path, capsys):
    # a directory holding only a user's generations.json used to be taken for a chain and overwritten
    import hashlib

    base = ["track=classify", "task.name=digits-3", "student.name=mlp:8", "train.steps=5", "train.eval_every=0",
            "train.log_every=5"]
    assert main(["train", *base, "method=ce", f"out={tmp_path / 't'}"]) == 0
    chain = ["generations", "1", *base, "method=recursive", f"teacher.name={tmp_path / 't' / 'model'}"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "generations.json").write_text('{"my": "results"}')
    digest = hashlib.sha256((mine / "generations.json").read_bytes()).hexdigest()
    assert main([*chain, f"out={mine}"]) == 2
    assert (f"out={mine}: the directory is not empty and no retort generations made it (no chain.json)"
            in capsys.readouterr().err.replace("\n", ""))
    assert [p.name for p in mine.iterdir()] == ["generations.json"]
    assert hashlib.sha256((mine / "generations.json").read_bytes()).hexdigest() == digest
    # refused inputs leave no directory behind
    assert main([*chain, "method_args.a=2", f"out={tmp_path / 'new'}"]) == 2
    assert "method_args.a" in capsys.readouterr().err and not (tmp_path / "new").exists()
    assert main([*chain, "student.name=bogus", f"out={tmp_path / 'new'}"]) == 2
    assert "model 'bogus': unknown" in capsys.readouterr().err and not (tmp_path / "new").exists()
    # a chain this command made continues; so does one made before the marker (gen-K runs only)
    assert main([*chain, f"out={tmp_path / 'ok'}"]) == 0
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["chain.json", "gen-1", "generations.json"]
    assert main(["generations", "2", *chain[2:], f"out={tmp_path / 'ok'}"]) == 0
    (tmp_path / "ok" / "chain.json").unlink()
    assert main([*chain, f"out={tmp_path / 'ok'}"]) == 0


def test_a_lelp_student_has_a_subclass_head_and_reloads(tmp_path):
    base = ["track=classify", "task.name=digits-bin", "train.steps=20", "train.eval_every=0", "train.log_every=20"]
    assert main(["train", *base, "method=ce", "student.name=mlp:32-16", f"out={tmp_path / 't'}"]) == 0
    assert main(["train", *base, "method=lelp", "method_args.S=3", "student.name=mlp:8",
                 f"teacher.name={tmp_path / 't' / 'model'}", f"out={tmp_path / 's'}"]) == 0
    model, meta = models.load(str(tmp_path / "s" / "model"))
    assert meta["subclasses"] == 3 and model.subclass_logits(torch.zeros(2, 1, 8, 8)).shape == (2, 6)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 2)


def test_lelp_oracle_and_kmeans_targets():
    from types import SimpleNamespace

    from retort.classify.data import load_dataset
    from retort.classify.methods.lelp import oracle_targets

    data = load_dataset(SimpleNamespace(name="digits-bin", val_fraction=0.1))
    t = oracle_targets(data, 5)
    digit, y = data.sub["train"], data.y["train"]
    i = int((digit == 7).nonzero()[0])  # odd -> class 1; odd digits 1,3,5,7,9 -> 7 is s=3
    assert y[i] == 1 and int(t[i].argmax()) == 1 * 5 + 3 and float(t.sum()) == len(y)
    with pytest.raises(Exception, match="has no true subclasses"):
        oracle_targets(load_dataset(SimpleNamespace(name="digits", val_fraction=0.1)), 5)
    g = torch.Generator().manual_seed(1)
    h, yy = torch.randn(120, 6, generator=g), torch.arange(120) % 2
    proj = LelpProjection(h, yy, torch.randn(2, 6, generator=g), 3, True, 0)
    proj.fit_kmeans(h, yy, 0)
    nearest = proj.nearest_centroid(h)
    assert nearest.shape == (120, 2, 3) and torch.equal(nearest.sum(-1), torch.ones(120, 2))
    assert proj.centroids.shape == (2, 3, 6)

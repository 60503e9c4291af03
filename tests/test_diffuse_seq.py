"""Sequences and `onpolicy_dmd` (LiveTalk's recipe at toy scale): the toy video's exact mixture and
its coherence metric on known inputs, the teacher's ODE states against the closed-form flow of a
Gaussian, the block-causal student's causality and gradient truncation, and the method through the
CLI (the ODE stage, then self-rollout DMD with TTUR; exact resume across the stage boundary; a
longer rollout in `retort eval`; one-line errors)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from retort.cli import main
from retort.diffuse import models
from retort.diffuse.data import load_data
from retort.diffuse.evaluate import coherence, on_track
from retort.diffuse.mixtures import Mixture, orbit, sequence_mixture
from retort.diffuse.nets import CausalDenoiser, ExactDenoiser
from retort.diffuse.sampling import ode_states


def cli(*args):
    assert main(list(args)) == 0


def test_the_toy_video_moves_one_position_per_frame_either_way():
    m = sequence_mixture(frames=5, positions=8)
    pts = orbit(8)
    assert m.means.shape == (16, 10) and torch.allclose(m.weights, torch.full((16,), 1 / 16, dtype=torch.float64))
    assert torch.allclose(m.means[3].reshape(5, 2), pts[[3, 4, 5, 6, 7]])      # counter-clockwise from 3
    assert torch.allclose(m.means[8 + 1].reshape(5, 2), pts[[1, 0, 7, 6, 5]])  # clockwise from 1
    data = load_data("ring-seq")
    g = torch.Generator().manual_seed(0)
    long = data.sequences(2000, 48, g)
    # every window of a longer sequence is a sequence of the mixture (stationary): as coherent, as on track
    for i in (0, 24, 72):
        c, moves = coherence(long[:, i:i + 24], data.frame_mixture().means)
        assert c == 1.0 and moves == 1.0
        share = float(on_track(long[:, i:i + 24], data.mixture)[0].double().mean())
        assert share == pytest.approx((1 - math.exp(-4.5)) ** 12, abs=0.03)  # all 12 frames within 3 std


def test_coherence_known_answers():
    pts = orbit(16).float()
    fwd = pts[[0, 1, 2, 3]].reshape(1, -1)
    back = pts[[5, 4, 3, 2]].reshape(1, -1)
    turn = pts[[5, 6, 5, 4]].reshape(1, -1)           # reverses mid-way: 3 one-position moves, not coherent
    jump = pts[[0, 2, 3, 4]].reshape(1, -1)           # skips a position: 2 of 3 moves right
    still = pts[[7, 7, 7, 7]].reshape(1, -1)
    c, moves = coherence(torch.cat([fwd, back, turn, jump, still]), pts)
    assert c == pytest.approx(2 / 5)
    assert moves == pytest.approx((3 + 3 + 3 + 2 + 0) / 15)


def test_exact_denoiser_in_many_dimensions_matches_a_single_gaussian():
    # one component: D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2) in any dimension
    mu = torch.randn(1, 24, dtype=torch.float64)
    m = Mixture(mu, torch.tensor([0.3], dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    x = torch.randn(5, 24, dtype=torch.float64)
    want = (0.09 * x + 4.0 * mu) / (0.09 + 4.0)
    assert torch.allclose(ExactDenoiser(m)(x, 2.0), want)
    # two components far apart, in 24-D: the posterior weights include the right normaliser
    two = Mixture(torch.stack([mu[0], -mu[0]]), torch.tensor([0.3, 0.6], dtype=torch.float64),
                  torch.tensor([0.5, 0.5], dtype=torch.float64))
    lp = two.log_prob(mu.expand(3, -1), 0.0)
    direct = torch.distributions.MultivariateNormal(mu[0], 0.09 * torch.eye(24, dtype=torch.float64))
    assert torch.allclose(lp, direct.log_prob(mu[0]) + math.log(0.5), atol=1e-9)


def test_ode_states_follow_the_closed_form_flow_of_a_gaussian():
    # for x0 ~ N(mu, s^2 I) the EDM ODE keeps (x_sigma - mu) / sqrt(s^2 + sigma^2) fixed
    mu, s = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64), 0.4
    m = Mixture(mu, torch.tensor([s], dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    z = torch.randn(64, 3, dtype=torch.float64)
    levels = [20.0, 4.85, 0.82, 0.075]
    states, end = ode_states(ExactDenoiser(m), z, levels, substeps=40)
    for lv, x in zip(levels, states):
        want = mu + (z * 20.0 - mu) * math.sqrt(s**2 + lv**2) / math.sqrt(s**2 + 20.0**2)
        assert torch.allclose(x, want, atol=1e-3 * max(1.0, lv)), lv
    assert torch.allclose(end, mu + (z * 20.0 - mu) * s / math.sqrt(s**2 + 400.0), atol=1e-3)


def test_rollout_is_block_causal_and_truncates_gradients():
    torch.manual_seed(0)
    net = CausalDenoiser(2, 3, 3, width=32, depth=2, sigma_data=2.8)
    sig = [20.0, 4.85, 0.82, 0.075]
    z = torch.randn(4, 24)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    with torch.no_grad():
        a = net.rollout(z, sig, generator=g())
        z2 = z.clone()
        z2[:, 12:] += 1.0                          # later blocks' noise
        b = net.rollout(z2, sig, generator=g())
    assert torch.equal(a[:, :12], b[:, :12]) and not torch.allclose(a[:, 12:], b[:, 12:])
    with torch.no_grad():                          # an earlier block's output is the context of the next
        z3 = z.clone()
        z3[:, :6] += 1.0
        c = net.rollout(z3, sig, generator=g())
    assert not torch.allclose(a[:, 6:12], c[:, 6:12])
    # one step per block: block 1's loss reaches its own noise, not block 0's (the context is detached)
    zz = z.clone().requires_grad_(True)
    net.rollout(zz, sig, exits=[0, 0, 0, 0], grad=True)[:, 6:12].sum().backward()
    assert zz.grad[:, :6].abs().max() == 0 and zz.grad[:, 6:12].abs().max() > 0
    # exit at step 2: the steps before carry no gradient, so neither does the block's noise
    zz = z.clone().requires_grad_(True)
    out = net.rollout(zz, sig, exits=[0, 2, 0, 0], grad=True)
    out[:, 6:12].sum().backward()
    assert zz.grad.abs().max() == 0 and any(p.grad is not None and p.grad.abs().max() > 0 for p in net.parameters())
    with pytest.raises(ValueError, match="whole blocks"):
        net.rollout(torch.randn(2, 20), sig)


@pytest.fixture(scope="module")
def seq_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq") / "teacher"
    cli("teacher", "track=diffuse", "task.name=ring-seq", f"out={out}", "train.steps=100", "train.save_every=0",
        "eval.n=300")
    return out / "model"


def _run(out, teacher, *extra):
    cli("train", "track=diffuse", "task.name=ring-seq", "method=onpolicy_dmd", f"teacher.name={teacher}",
        f"out={out}", "student.steps=4", "student.name=causal:32-2", "train.batch_size=64", "train.log_every=1",
        "eval.n=300", "method_args.ode_pairs=256", "method_args.ode_substeps=4", *extra)
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return json.loads((Path(out) / "summary.json").read_text()), rows


def test_onpolicy_dmd_runs_the_ode_stage_then_self_rollout_dmd(tmp_path, seq_teacher):
    s, rows = _run(tmp_path / "run", seq_teacher, "train.steps=160", "method_args.ode_steps=150", "train.lr=1e-3",
                   "train.save_every=0", "train.eval_every=160")
    ode = [r["ode"] for r in rows if "ode" in r]
    assert len(ode) == 150 and all("fake" not in r for r in rows if r["step"] <= 150)
    assert sum(ode[-20:]) / 20 < sum(ode[:20]) / 20 / 2       # the regression learns the teacher's trajectories
    stage2 = [r for r in rows if r["step"] > 150 and "fake" in r]
    assert len(stage2) == 10
    assert [r["step"] for r in stage2 if "dm" in r] == [151, 156]  # TTUR counted from the stage's start
    assert s["eval"]["rollout_frames"] == 48 and len(s["eval"]["coherent_by_window"]) == 4
    model, meta = models.load(str(tmp_path / "run" / "model"))
    assert isinstance(model, CausalDenoiser) and meta["arch"] == "causal:32-2" and meta["method"] == "onpolicy_dmd"
    out = tmp_path / "eval.json"
    assert main(["eval", "track=diffuse", "task.name=ring-seq", "eval.n=300", "-m",
                 f"student={tmp_path / 'run' / 'model'}", "--hybrid", "1", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert list(got) == ["teacher (exact), 35 NFE", "student, 4 NFE"]     # no hybrid for a causal student
    teacher, student = got.values()
    assert teacher["coherent"] > 0.99 and "late_coherent" not in teacher
    assert student["rollout_frames"] == 48 and len(student["sequences"][0]) == 48
    from retort.report import write_report

    assert "samples of each generator" in write_report([str(out)], tmp_path / "r.html").read_text()


def test_onpolicy_dmd_resumes_exactly_across_the_stage_boundary(tmp_path, seq_teacher):
    args = ["train.steps=30", "method_args.ode_steps=15", "train.save_every=10", "train.eval_every=0"]
    _run(tmp_path / "straight", seq_teacher, *args)
    _run(tmp_path / "cut", seq_teacher, *args)
    cut = tmp_path / "cut"
    shutil.rmtree(cut / "ckpt" / "step-0000030")
    shutil.rmtree(cut / "model")
    (cut / "summary.json").unlink()
    cli("train", "--resume", "track=diffuse", "task.name=ring-seq", "method=onpolicy_dmd", f"teacher.name={seq_teacher}",
        f"out={cut}", "student.steps=4", "student.name=causal:32-2", "train.batch_size=64", "train.log_every=1",
        "eval.n=300", "method_args.ode_pairs=256", "method_args.ode_substeps=4", *args)
    a, _ = models.load(str(tmp_path / "straight" / "model"))
    b, _ = models.load(str(cut / "model"))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k


@pytest.mark.parametrize("args,expect", [
    (["task.name=ring", "method=onpolicy_dmd"], "ring is not a sequence"),
    (["task.name=ring-seq", "method=onpolicy_dmd", "student.name=mlp:64-2"], "block-causal student"),
    (["task.name=ring", "method=dmd2", "student.name=causal:64-2"], "for sequences"),
    (["task.name=ring-seq", "method=onpolicy_dmd", "student.name=causal:64"], "expected causal:WIDTH-DEPTH"),
    (["task.name=ring-seq", "method=onpolicy_dmd", "method_args.reg_weight=0.25"], "ODE initialisation"),
])
def test_bad_input_gets_one_clear_line(tmp_path, capsys, args, expect, seq_teacher):
    assert main(["train", "track=diffuse", f"out={tmp_path / 'x'}", "train.steps=2", f"teacher.name={seq_teacher}",
                 *args]) == 2
    assert expect in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

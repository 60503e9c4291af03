"""Swing distillation (`method=swing`, methods/other.md §3) on both tracks: the per-item temperature is
the spec's function of rho (checked on constructed batches), rho = 0 with no noise is `kd` exactly,
the noise is seeded (the same after a resume), rows marked private in a user's data reach the loss,
and a few training steps run on each track."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import lm_method, peaked_teacher, tiny_overrides

from retort.cli import main
from retort.config import load_config
from retort.contract import BatchPlan
from retort.errors import ConfigError, DataError
from retort.losses.classify import hinton_kd
from retort.losses.swing import (
    noisy_target_logprobs,
    swing_kd,
    swing_temperature,
    target_noise,
)

# ------------------------------------------------------------------ the loss


def test_each_row_is_tempered_at_its_own_swung_temperature():
    g = torch.Generator().manual_seed(0)
    s, t = 3 * torch.randn(5, 7, generator=g), 3 * torch.randn(5, 7, generator=g)
    rho = torch.tensor([0.0, 0.25, 0.5, 1.0, 0.0])
    tau = swing_temperature(rho, 2.0, 8.0)
    assert tau.tolist() == [2.0, 4.0, 6.0, 10.0, 2.0]
    per_row = swing_kd(s, t, temperature=tau)
    for i in range(5):  # bit for bit Hinton's T^2 KL at that row's temperature
        assert torch.equal(per_row[i:i + 1], hinton_kd(s[i:i + 1], t[i:i + 1], temperature=float(tau[i])))
    # a float64 reference of tau^2 KL(softmax(t / tau) || softmax(s / tau))
    lp_t = torch.log_softmax(t.double() / tau.double()[:, None], -1)
    lp_s = torch.log_softmax(s.double() / tau.double()[:, None], -1)
    ref = tau.double() ** 2 * (lp_t.exp() * (lp_t - lp_s)).sum(-1)
    assert torch.allclose(per_row.double(), ref, rtol=1e-5)
    # the methods' default: the student at the base temperature, only the teacher's target swung
    base = swing_kd(s, t, temperature=tau, student_temperature=2.0)
    lp_s2 = torch.log_softmax(s.double() / 2.0, -1)
    assert torch.allclose(base.double(), 4.0 * (lp_t.exp() * (lp_t - lp_s2)).sum(-1), rtol=1e-5)
    assert torch.equal(base[[0, 4]], per_row[[0, 4]])  # rho = 0: the same either way


def test_noise_moves_the_target_by_a_few_percent_whatever_the_vocabulary():
    for v in (10, 4096):
        t = 3 * torch.randn(256, v, generator=torch.Generator().manual_seed(v))
        clean = noisy_target_logprobs(t, 1.0).exp()
        noisy = noisy_target_logprobs(t, 1.0, target_noise(t.shape, 0.2, torch.Generator().manual_seed(1))).exp()
        assert torch.allclose(noisy.sum(-1), torch.ones(256), atol=1e-5) and (noisy >= 0).all()
        tv = float(0.5 * (noisy - clean).abs().sum(-1).mean())
        assert 0.04 < tv < 0.1, (v, tv)  # the spec's 0.05-0.1 at the default noise
    assert torch.equal(target_noise((3, 5), 0.2, torch.Generator().manual_seed(7)),
                       target_noise((3, 5), 0.2, torch.Generator().manual_seed(7)))


# ------------------------------------------------------------------ classifier track


def _digits_npz(path, private_every=0):
    from retort.images import digits_arrays

    _, _, x, digit = digits_arrays()
    arrays = {"x": x, "y": digit}
    if private_every:
        arrays["private"] = (np.arange(len(digit)) % private_every == 0)
    np.savez(path, **arrays)
    return path


def _cls_ctx(data, teacher):
    from retort.classify.methods import ClassifyContext

    run = SimpleNamespace(seed=0, data=SimpleNamespace(augment="none", cache_teacher=False))
    return ClassifyContext(run=run, data=data, device=torch.device("cpu"), log=lambda m: None,
                           load_teacher=lambda: (teacher, {}))


def test_classifier_swing_is_kd_with_rho_zero_and_no_noise(tmp_path):
    from retort.classify import models
    from retort.classify.data import load_dataset
    from retort.classify.methods import METHODS

    data = load_dataset(SimpleNamespace(name="digits-3", val_fraction=0.1))
    torch.manual_seed(0)
    student, teacher = models.build("mlp:16", (1, 8, 8), 3), models.build("mlp:32", (1, 8, 8), 3)
    ctx = _cls_ctx(data, teacher)
    swing = METHODS["swing"](ctx, METHODS["swing"].Config(temperature=4.0, noise=0.0))
    kd = METHODS["kd"](ctx, METHODS["kd"].Config(temperature=4.0))
    b_swing, b_kd = next(swing.batches(BatchPlan(0, 1, 1, 64, 0, 0))), next(kd.batches(BatchPlan(0, 1, 1, 64, 0, 0)))
    assert torch.equal(b_swing["x"], b_kd["x"]) and b_swing["rho"].eq(0).all()
    a, b = swing.loss(student, b_swing), kd.loss(student, b_kd)
    assert torch.equal(a.loss, b.loss) and a.count == b.count
    # with noise the loss moves, by the micro-batch's seed and nothing else
    noisy = METHODS["swing"](ctx, METHODS["swing"].Config(temperature=4.0))
    c1, c2 = noisy.loss(student, b_swing), noisy.loss(student, b_swing)
    assert torch.equal(c1.loss, c2.loss) and not torch.equal(c1.loss, a.loss)
    assert not torch.equal(noisy.loss(student, {**b_swing, "noise_seed": 1}).loss, c1.loss)


def test_private_rows_are_marked_in_npz_parquet_and_folders(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from retort.classify.data import load_dataset

    def cfg(p):
        return SimpleNamespace(name=str(p), val_fraction=0.0)

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)).astype(np.float32), np.arange(20) % 2
    flags = np.arange(20) < 5
    np.savez(tmp_path / "a.npz", x=x, y=y, private=flags)
    d = load_dataset(cfg(tmp_path / "a.npz"))
    assert float(d.privacy("train").sum() + d.privacy("test").sum()) == 5.0
    assert load_dataset(cfg(_digits_npz(tmp_path / "b.npz"))).privacy("train").eq(0).all()  # none marked: 0

    pq.write_table(pa.table({"f0": x[:, 0], "f1": x[:, 1], "label": y, "private": flags.astype(float) * 0.5}),
                   tmp_path / "a.parquet")
    d = load_dataset(cfg(tmp_path / "a.parquet"))
    assert d.input_shape == (2,) and float(d.privacy("train").sum() + d.privacy("test").sum()) == 2.5

    for c in ("cat", "dog"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray((rng.random((4, 4)) * 255).astype(np.uint8)).save(tmp_path / "img" / c / f"{i}.png")
    (tmp_path / "img" / "private.txt").write_text("# the owner's own photos\ncat/0.png\ndog/3.png\t0.5\n")
    d = load_dataset(cfg(tmp_path / "img"))
    assert sorted(torch.cat([d.privacy("train"), d.privacy("test")]).tolist())[-2:] == [0.5, 1.0]

    (tmp_path / "img" / "private.txt").write_text("cat/0.png\ncat/9.png\n")
    with pytest.raises(DataError, match=r"private.txt:2: 'cat/9.png' is not an image of"):
        load_dataset(cfg(tmp_path / "img"))
    np.savez(tmp_path / "bad.npz", x=x, y=y, private=np.where(flags, 2.0, 0.0))
    with pytest.raises(DataError, match=r"bad.npz: private: 5 privacy score\(s\) outside \[0, 1\], the first at row 0"):
        load_dataset(cfg(tmp_path / "bad.npz"))
    np.savez(tmp_path / "short.npz", x=x, y=y, private=flags[:10])
    with pytest.raises(DataError, match=r"private has shape \(10,\); expected \(20,\)"):
        load_dataset(cfg(tmp_path / "short.npz"))


class _Killed(BaseException):
    pass


def _die_after_the_first_checkpoint(monkeypatch):
    """The run stops right after writing its first checkpoint, as kill -9 would; returns the real saver."""
    from retort.train import loop

    real = loop.save_checkpoint

    def save_then_die(run_dir, step, **kw):
        real(run_dir, step, **kw)
        raise _Killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    return real


def _rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_classifier_swing_trains_on_private_rows_and_resumes_with_the_same_noise(tmp_path, monkeypatch):
    data = _digits_npz(tmp_path / "d.npz", private_every=5)
    teacher = tmp_path / "teacher"
    assert main(["train", "track=classify", f"task.name={data}", "method=ce", "student.name=mlp:32",
                 f"out={teacher}", "train.steps=60", "train.eval_every=0", "train.log_every=20"]) == 0
    common = ["train", "track=classify", f"task.name={data}", "method=swing", "student.name=mlp:16",
              f"teacher.name={teacher / 'model'}", "train.steps=6", "train.log_every=1", "train.eval_every=0",
              "train.save_every=3", "train.lr=1e-2"]
    assert main([*common, f"out={tmp_path / 'ref'}"]) == 0
    ref = _rows(tmp_path / "ref")
    assert len(ref) == 6 and all(0.05 < r["private"] < 0.4 for r in ref)  # ~1 row in 5 marked
    real = _die_after_the_first_checkpoint(monkeypatch)
    with pytest.raises(_Killed):
        main([*common, f"out={tmp_path / 'cut'}"])
    monkeypatch.setattr("retort.train.loop.save_checkpoint", real)
    assert main([*common, f"out={tmp_path / 'cut'}", "--resume"]) == 0
    assert [r["loss"] for r in _rows(tmp_path / "cut")] == [r["loss"] for r in ref]


# ------------------------------------------------------------------ language-model track



def _lm_method(tmp_path, name, **cfg):
    return lm_method(tmp_path, name, student_seed=9, **cfg)


@pytest.mark.parametrize("student_temperature", ["base", "swung"])
def test_lm_token_temperature_is_the_spec_function_of_rho(tmp_path, student_temperature):
    swing, student, _ = _lm_method(tmp_path, "swing", noise=0.0, temperature=1.5, rise=6.0,
                                   student_temperature=student_temperature)
    batch = next(swing.batches(BatchPlan(0, 1, 1, 4, 0, 0)))
    g = torch.Generator().manual_seed(3)
    batch["rho"] = torch.rand(batch["rho"].shape, generator=g).round(decimals=2)  # a constructed rho per token
    out = swing.loss(student, batch)
    teacher = swing.run_teacher.teacher.model
    with torch.no_grad():
        zs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
        zt = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
    sel = batch["labels"][:, 1:] != -100
    tau = 1.5 + 6.0 * batch["rho"][:, 1:][sel].double()
    s = tau if student_temperature == "swung" else torch.full_like(tau, 1.5)  # the student's temperature
    lp_s, lp_t = torch.log_softmax(zs[sel] / s[:, None], -1), torch.log_softmax(zt[sel] / tau[:, None], -1)
    want = (s ** 2 * (lp_t.exp() * (lp_t - lp_s)).sum(-1)).sum()
    assert out.count == int(sel.sum()) and float(out.loss.detach()) == pytest.approx(float(want), rel=1e-5)


def test_lm_swing_with_rho_zero_and_no_noise_is_kd(tmp_path):
    swing, student, _ = _lm_method(tmp_path, "swing", noise=0.0, temperature=2.0, pii="", ce_weight=0.3)
    kd, _, _ = _lm_method(tmp_path, "kd", temperature=2.0, ce_weight=0.3)
    b_swing = next(swing.batches(BatchPlan(0, 1, 1, 4, 0, 0)))
    b_kd = next(kd.batches(BatchPlan(0, 1, 1, 4, 0, 0)))
    assert torch.equal(b_swing["input_ids"], b_kd["input_ids"]) and b_swing["rho"].eq(0).all()
    a, b = swing.loss(student, b_swing), kd.loss(student, b_kd)
    ga = torch.autograd.grad(a.loss, student.lm_head.weight)[0]
    gb = torch.autograd.grad(b.loss, student.lm_head.weight)[0]
    # equal up to float32 rounding: kd's fused path sums in another order
    assert a.count == b.count and float(a.loss.detach()) == pytest.approx(float(b.loss.detach()), rel=1e-5)
    assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-7)
    assert a.metrics["ce"] == pytest.approx(b.metrics["ce"], rel=1e-5)


def test_lm_noise_is_seeded_by_the_micro_batch(tmp_path):
    swing, student, _ = _lm_method(tmp_path, "swing", chunk=16)
    batch = next(swing.batches(BatchPlan(0, 1, 1, 4, 0, 0)))
    assert batch["rho"].gt(0).any()  # the built-in task's digits
    a, b = swing.loss(student, batch), swing.loss(student, batch)
    assert torch.equal(a.loss, b.loss)
    assert float(swing.loss(student, {**batch, "noise_seed": 5}).loss.detach()) != float(a.loss.detach())
    a.loss.backward()  # the chunks' noise is drawn again identically when checkpoint recomputes them
    assert torch.isfinite(student.lm_head.weight.grad).all()


def test_lm_swing_trains_and_a_resume_draws_the_same_noise(tmp_path, monkeypatch):
    from retort.lm.config import TrainRun
    from retort.train import train

    teacher = peaked_teacher(tmp_path / "t")
    over = {"method": "swing", "teacher.name": teacher, "seed": 1, "train.lr": 0.02, "train.batch_size": 8,
            "data.n_train": 64, "train.save_every": 4, "eval.n": 2}
    train(load_config(TrainRun, None, tiny_overrides(tmp_path / "ref", steps=8, **over)))
    rows = _rows(tmp_path / "ref")
    assert rows[-1]["kd"] < rows[0]["kd"] and all(r["private"] > 0 for r in rows)
    real = _die_after_the_first_checkpoint(monkeypatch)
    cut = load_config(TrainRun, None, tiny_overrides(tmp_path / "cut", steps=8, **over))
    with pytest.raises(_Killed):
        train(cut)
    monkeypatch.setattr("retort.train.loop.save_checkpoint", real)
    train(cut, resume=True)
    assert [r["loss"] for r in _rows(tmp_path / "cut")] == [r["loss"] for r in rows]


@pytest.mark.parametrize("args, message", [
    ({"method_args.pii": "email,ssn"}, "method_args.pii='email,ssn': unknown rule 'ssn'"),
    ({"method_args.divergence": "reverse_kl"}, "reverse_kl .* is infinite where the noise empties a class"),
])
def test_lm_refusals_name_the_option(tmp_path, args, message):
    from retort.lm.config import TrainRun
    from retort.train import train

    with pytest.raises(ConfigError, match=message):
        train(load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **{"method": "swing", **args})))
    assert not (tmp_path / "r").exists()


def test_both_tracks_list_swing_with_its_paper(capsys):
    for track in ("lm", "classify"):
        assert main(["methods", "--track", track]) == 0
        out = capsys.readouterr().out
        assert "swing:" in out and "2212.08349" in out and "method_args.rise" in out and "method_args.noise" in out


@pytest.mark.slow
def test_the_digits_check_runs_at_a_tiny_size(tmp_path, monkeypatch):
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    sys.modules.pop("swing_digits", None)
    bench = importlib.import_module("swing_digits")
    result = bench.run(SimpleNamespace(work=str(tmp_path), share=0.1, seeds=[0], steps=3, teacher_steps=3,
                                       student="mlp:8"))
    assert list(result["rows"]) == list(bench.ARMS) and set(result["summary"]) == set(bench.ARMS)
    row = result["rows"]["swing (target T 2->10, noise 0.2)"]
    assert 0.07 < row["n_private"][0] / row["n_train"][0] < 0.13  # 10% of the rows, less the validation split's
    assert all(0 <= v[0] <= 1 for k, v in row.items() if not k.startswith("n_"))
    rho = np.load(tmp_path / "digits-private.npz")["private"]
    assert rho.dtype == bool and 0.09 < rho.mean() < 0.11

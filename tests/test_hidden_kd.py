"""Hidden-state KD (`kd` with method_args.hidden): the per-token losses, the layer-pair parsing and
checks, the owned projection (trained, checkpointed, resumed exactly), and a run whose term falls."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from reference import hidden_rows
from retort.config import load_config
from retort.errors import ConfigError
from retort.lm.config import ModelConfig, TrainRun
from retort.lm.methods.hidden import (HIDDEN_LOSSES, LayerProjections, check_layer_pairs, hidden_state_loss,
                                      parse_layer_pairs)
from retort.lm.methods.kd import KD
from retort.lm.models import load_model, save_model
from retort.train import train


@pytest.mark.parametrize("name", ["mse", "cosine"])
def test_hidden_losses_match_the_float64_reference_value_and_gradient(name):
    torch.manual_seed(0)
    s = torch.randn(47, 123, dtype=torch.float64, requires_grad=True)
    t = torch.randn(47, 123, dtype=torch.float64)
    got = HIDDEN_LOSSES[name](s, t)
    assert got.shape == (47,)
    assert torch.allclose(got.double(), hidden_rows(name, s.detach(), t), atol=1e-5)
    got.sum().backward()
    s64 = s.detach().clone().requires_grad_(True)
    ref = ((s64 - t) ** 2).mean(-1) if name == "mse" else 1 - torch.nn.functional.cosine_similarity(s64, t, dim=-1)
    ref.sum().backward()
    assert torch.allclose(s.grad, s64.grad, atol=1e-5)


def test_hidden_losses_golden_numbers_and_properties():
    s, t = torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 1.0], [6.0, 8.0]])
    assert HIDDEN_LOSSES["mse"](s, t).tolist() == pytest.approx([1.0, 12.5])
    assert HIDDEN_LOSSES["cosine"](s, t).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)  # orthogonal; parallel
    x = torch.randn(5, 9)
    assert torch.allclose(HIDDEN_LOSSES["mse"](x, x), torch.zeros(5))
    assert torch.allclose(HIDDEN_LOSSES["cosine"](x, 3 * x), torch.zeros(5), atol=1e-6)  # blind to scale
    assert HIDDEN_LOSSES["mse"](x, 3 * x).min() > 0


def test_hidden_state_loss_averages_pairs_over_selected_positions_only():
    torch.manual_seed(0)
    st = tuple(torch.randn(2, 5, 4) for _ in range(3))
    tt = tuple(torch.randn(2, 5, 4) for _ in range(4))
    sel = torch.tensor([[False, True, True, False], [True, False, False, False]])
    got = hidden_state_loss(st, tt, [(1, 3), (2, 0)], sel, HIDDEN_LOSSES["mse"])
    want = sum(HIDDEN_LOSSES["mse"](st[s][:, :-1][sel], tt[t][:, :-1][sel]).sum() for s, t in [(1, 3), (2, 0)]) / 2
    assert got == pytest.approx(float(want))
    changed = tuple(x.clone() for x in st)
    changed[1][0, 0] += 100  # position 0 of row 0 is not selected
    changed[1][0, 4] += 100  # the last position predicts nothing
    assert hidden_state_loss(changed, tt, [(1, 3), (2, 0)], sel, HIDDEN_LOSSES["mse"]) == pytest.approx(float(want))


def test_layer_pairs_parse_and_check():
    assert parse_layer_pairs("1:4,2:8") == [(1, 4), (2, 8)]
    assert parse_layer_pairs("0:0,") == [(0, 0)]
    for bad, why in [("64", "base-60"), ("1:4:2", "not a pair"), ("a:1", "not a pair"), ("1:2,1:2", "twice"),
                     ("-1:2", "not a pair")]:
        with pytest.raises(ValueError, match=why):
            parse_layer_pairs(bad)
    assert check_layer_pairs([(1, 3), (0, 0)], 1, 3) == []
    (msg,) = check_layer_pairs([(2, 1), (1, 4)], 1, 3)
    assert "2:1, 1:4 out of range" in msg and "student has 1 layers (indices 0..1)" in msg and "teacher 3 (0..3)" in msg


def test_projections_do_not_touch_the_global_random_stream_and_are_seeded():
    state = torch.random.get_rng_state()
    a, b = LayerProjections(2, 16, 64, seed=3), LayerProjections(2, 16, 64, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.maps[0].weight, a.maps[1].weight)


def _wide_teacher(path):
    """A random `student`-preset model (width 64, 3 layers) against the nano student (width 16, 1 layer)."""
    model, tok = load_model(ModelConfig(name="preset:student"), seed=123)
    save_model(model, tok, path)
    return str(path)


def _run(tmp_path, name, steps, teacher, **args):
    return load_config(TrainRun, None, tiny_overrides(tmp_path / name, steps=steps, **{
        "method": "kd", "teacher.name": teacher, "seed": 1, "train.lr": 0.02, "train.batch_size": 8,
        "data.n_train": 64, "method_args.hidden": "1:2,0:0", **args}))


def _rows(run):
    return [json.loads(l) for l in (Path(run.out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def test_hidden_kd_with_a_wider_teacher_trains_and_checkpoints_the_projection(tmp_path):
    teacher = _wide_teacher(tmp_path / "t")
    run = _run(tmp_path, "r", 20, teacher, **{"train.save_every": 20, "method_args.hidden_loss": "cosine"})
    train(run)
    rows = _rows(run)
    assert all("hidden" in r and "kd" in r for r in rows)
    assert rows[-1]["hidden"] < 0.7 * rows[0]["hidden"]
    saved = load_file(tmp_path / "r" / "ckpt" / "step-0000020" / "method" / "hidden_proj.safetensors")
    first = LayerProjections(2, 16, 64, seed=1).state_dict()
    assert saved.keys() == first.keys() and saved["maps.0.weight"].shape == (64, 16)
    assert not any(torch.equal(saved[k], first[k]) for k in first)  # the optimizer trained both maps


def test_hidden_term_alone_with_kd_weight_zero_and_no_projection_at_equal_widths(tmp_path):
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=5)  # the student's width
    save_model(model, tok, tmp_path / "t")
    run = _run(tmp_path, "r", 3, str(tmp_path / "t"), **{"method_args.kd_weight": 0, "method_args.hidden": "1:1,",
                                                          "train.save_every": 3})
    train(run)
    rows = _rows(run)
    assert rows[0]["loss"] == pytest.approx(rows[0]["hidden"], rel=1e-4) and "kd" not in rows[0]
    assert not (tmp_path / "r" / "ckpt" / "step-0000003" / "method" / "hidden_proj.safetensors").exists()


def test_resume_with_the_projection_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    teacher = _wide_teacher(tmp_path / "t")
    ref = _run(tmp_path, "ref", 8, teacher, **{"train.save_every": 4})
    train(ref)
    cut = _run(tmp_path, "cut", 8, teacher, **{"train.save_every": 4})
    real = KD.loss

    def dies_at_step_5(self, model, batch):
        if self.step == 5:
            raise KeyboardInterrupt("an injected interruption")
        return real(self, model, batch)

    monkeypatch.setattr(KD, "loss", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    assert (tmp_path / "cut" / "ckpt" / "step-0000004").is_dir() and not (tmp_path / "cut" / "model").exists()
    monkeypatch.setattr(KD, "loss", real)
    train(cut, resume=True)
    for f in ["model/model.safetensors", "ckpt/step-0000008/method/hidden_proj.safetensors"]:
        a, b = load_file(tmp_path / "ref" / f), load_file(tmp_path / "cut" / f)
        assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a), f
    assert [r["loss"] for r in _rows(ref)] == [r["loss"] for r in _rows(cut)]


@pytest.mark.parametrize("args, match", [
    ({"method_args.hidden": "2:1,"}, r"method_args.hidden='2:1,': 2:1 out of range: the student has 1 layers"),
    ({"method_args.hidden": "1:9,"}, r"1:9 out of range: .* the teacher 3 \(0..3\)"),
    ({"method_args.hidden": "1:4"}, r"method_args.hidden=.*base-60"),
    ({"method_args.hidden": "1:2,", "method_args.teacher": "offline", "data.source": "traces",
      "data.traces": "nowhere"}, r"needs the teacher's hidden states"),
    ({"method_args.hidden": "1:2,", "method_args.cross_tokenizer": "hybrid"},
     r"method_args.hidden with cross_tokenizer=hybrid: .*needs one tokenizer"),
])
def test_bad_layer_pairs_get_one_clear_message_and_no_run(tmp_path, args, match):
    teacher = _wide_teacher(tmp_path / "t")
    with pytest.raises(ConfigError, match=match):
        train(_run(tmp_path, "r", 2, teacher, **args))
    assert not (tmp_path / "r").exists()

"""Talking Models (`method=talking`): the per-token losses against float64 references, the model run
from a replaced layer against a hand-run of its layers, every term of the loss against a reference
computed here on a constructed batch, the gradient paths (none into the teacher; the interaction
reaching the student's encoder through the teacher's upper layers), and real runs: the teacher
unchanged while the maps and the student train, exact resume with the maps, the CLI end to end."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from retort.cli import main
from retort.config import load_config
from retort.errors import ConfigError
from retort.lm.config import ModelConfig, TrainRun
from retort.lm.methods import METHODS
from retort.lm.methods.base import MethodContext
from retort.lm.methods.talking import MessageMaps, Talking, final_states_from, message_alignment, round_trip
from retort.lm.models import load_model, save_model
from retort.lm.teachers.local import LocalTeacher
from retort.train import train

IGNORE = -100


# --------------------------------------------------------------------------- the per-token losses


def test_alignment_and_round_trip_match_float64_references_value_and_gradient():
    torch.manual_seed(0)
    m_s = torch.randn(47, 13, dtype=torch.float64, requires_grad=True)
    m_t = torch.randn(47, 13, dtype=torch.float64, requires_grad=True)
    got = message_alignment(m_s, m_t)
    ref = ((m_s.detach() - m_t.detach()) ** 2).sum(-1) / 13
    assert got.shape == (47,) and torch.allclose(got.double(), ref, atol=1e-5)
    got.sum().backward()
    assert torch.allclose(m_s.grad, 2 * (m_s.detach() - m_t.detach()).float().double() / 13, atol=1e-5)
    assert m_t.grad is None  # the teacher's message is a target
    h = torch.randn(5, 7, requires_grad=True)
    dec = torch.randn(5, 7, requires_grad=True)
    r = round_trip(dec, h)
    assert torch.allclose(r, ((dec - h) ** 2).mean(-1))
    r.sum().backward()
    assert h.grad is None and dec.grad is not None


def test_alignment_and_round_trip_golden_numbers():
    a, b = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, -1.0]])
    assert message_alignment(a, b).tolist() == pytest.approx([2.5, 5.0])
    assert round_trip(a, b).tolist() == pytest.approx([2.5, 5.0])
    assert message_alignment(a, a).tolist() == [0.0, 0.0]


def test_maps_are_seeded_and_leave_the_global_random_stream_alone():
    state = torch.random.get_rng_state()
    a, b = MessageMaps(16, 64, 8, "mlp", seed=3), MessageMaps(16, 64, 8, "mlp", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a("enc_s", torch.zeros(2, 16)).shape == (2, 8) and a("dec_t", torch.zeros(2, 8)).shape == (2, 64)
    c, d = MessageMaps(16, 64, 8, seed=3), MessageMaps(16, 64, 8, seed=4)
    assert not torch.equal(c.maps["enc_s"].weight, d.maps["enc_s"].weight)


# --------------------------------------------------------------------------- a model run from a layer


def _model(preset, seed):
    model, tok = load_model(ModelConfig(name=f"preset:{preset}"), seed=seed)
    return model.eval(), tok


def _by_hand(model, ids, layer, states, where):
    """The final normed states of a Llama with its layer-`layer` states (output_hidden_states index)
    replaced at `where`, its layers called one by one (no padding: the causal mask is the default)."""
    dec = model.model
    h = dec.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None]
    angles = dec.rotary_emb(h, pos)
    for i, block in enumerate(dec.layers):
        if i == layer and states is not None:
            h = torch.where(where[..., None], states, h)
        h = block(h, attention_mask=None, position_embeddings=angles, position_ids=pos)
    h = dec.norm(h)
    if layer == len(dec.layers) and states is not None:
        h = torch.where(where[..., None], states, h)
    return h


def _batch(tok, texts, prompt_len):
    ids = torch.tensor([[tok.bos_token_id] + tok.convert_tokens_to_ids(list(t)) for t in texts])
    labels = ids.clone()
    labels[:, :prompt_len] = IGNORE
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_final_states_from_a_replaced_layer_equal_a_hand_run_of_the_layers_above(layer):
    model, tok = _model("student", 0)
    batch = _batch(tok, ["12+34=46", "9*9=81.."], 4)
    where = torch.zeros(2, 9, dtype=torch.bool)
    where[:, 4:8] = True
    with torch.no_grad():
        own = model(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states[-1]
        assert torch.allclose(_by_hand(model, batch["input_ids"], layer, None, where), own, atol=1e-5)
        states = 3 * torch.randn(2, 9, 64)
        got = final_states_from(model, batch, layer, states, where)
        want = _by_hand(model, batch["input_ids"], layer, states, where)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, own, atol=1e-3)
    if layer < 3:  # the causal mask: positions before the first replaced one are the model's own
        assert torch.allclose(got[:, :4], own[:, :4], atol=1e-5)
    again = model(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states[-1]
    assert torch.equal(again, own)  # the hook is gone once the block closes


# --------------------------------------------------------------------------- every term against a reference


def _method(student, teacher, tok, **cfg):
    ctx = MethodContext(run=SimpleNamespace(seed=0), task=None, tokenizer=tok,
                        load_teacher=lambda: LocalTeacher("t", teacher.requires_grad_(False), tok))
    m = Talking(ctx, Talking.Config(**cfg))
    m.bind(lambda: student)
    m.owned_modules = {name: o.module for name, o in m.owned().items()}
    return m


def _kl64(p_logits, q_logits, temperature):
    """KL(softmax(p / T) || softmax(q / T)) per row, float64."""
    lp = torch.log_softmax(p_logits.double() / temperature, -1)
    lq = torch.log_softmax(q_logits.double() / temperature, -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def test_every_term_equals_a_reference_computed_here():
    student, tok = _model("nano", 1)
    teacher, _ = _model("student", 2)  # 3 layers of width 64 against 1 of width 16
    batch = _batch(tok, ["12+34=46", "9*9=81.."], 4)
    tau = 2.0
    m = _method(student, teacher, tok, temperature=tau, layers="1:1,", message_dim=8, maps="mlp")
    maps = m.owned_modules["talking"]
    out = m.loss(student, batch)

    with torch.no_grad():
        ids = batch["input_ids"]
        sel = batch["labels"][:, 1:] != IGNORE
        where = torch.cat([sel, torch.zeros(2, 1, dtype=torch.bool)], 1)
        y = batch["labels"][:, 1:][sel]
        s = student(input_ids=ids, output_hidden_states=True)
        t = teacher(input_ids=ids, output_hidden_states=True)
        h_s, h_t = s.hidden_states[1], t.hidden_states[1]
        m_s, m_t = maps("enc_s", h_s), maps("enc_t", h_t)
        z_s, z_t = s.logits[:, :-1][sel], t.logits[:, :-1][sel]
        ref = {
            "ce": torch.nn.functional.cross_entropy(z_s.double(), y, reduction="sum"),
            "kd": _kl64(z_t, z_s, tau).sum(),
            "align": ((m_s[where] - m_t[where]).double() ** 2).mean(-1).sum(),
            "roundtrip": ((maps("dec_s", m_s[where]) - h_s[where]).double() ** 2).mean(-1).sum()
            + ((maps("dec_t", m_t[where]) - h_t[where]).double() ** 2).mean(-1).sum(),
        }
        reply = _by_hand(teacher, ids, 1, maps("dec_t", m_s), where)  # teacher layers 2, 3 on the message
        z_reply = teacher.lm_head(reply)[:, :-1][sel]
        ref["reply_kd"] = _kl64(z_reply, z_s, tau).sum()
        heard = _by_hand(student, ids, 1, maps("dec_s", maps("enc_t", reply)), where)  # its last index: the norm
        ref["receive_ce"] = torch.nn.functional.cross_entropy(student.lm_head(heard)[:, :-1][sel].double(), y,
                                                              reduction="sum")
    n = int(sel.sum())
    assert out.count == n
    for k, v in ref.items():
        assert out.metrics[k] == pytest.approx(float(v) / n, rel=1e-4, abs=1e-6), k
    total = ref["ce"] + tau**2 * (ref["kd"] + ref["reply_kd"]) + ref["align"] + ref["roundtrip"] + ref["receive_ce"]
    assert float(out.loss.detach()) == pytest.approx(float(total), rel=1e-4)
    assert ref["reply_kd"] > 0 and not torch.allclose(z_reply, z_t)  # the teacher answered the student's message


def test_gradients_reach_the_student_and_every_map_never_the_teacher():
    student, tok = _model("nano", 1)
    teacher, _ = _model("student", 2)
    batch = _batch(tok, ["12+34=46", "9*9=81.."], 4)
    m = _method(student, teacher, tok)
    m.loss(student, batch).loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    maps = m.owned_modules["talking"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in maps.parameters())
    # the receive term alone: its gradient reaches E_S and D_T only through the teacher's upper layers
    maps.zero_grad()
    student.zero_grad()
    only = _method(student, teacher, tok, ce_weight=0, kd_weight=0, align_weight=0, roundtrip_weight=0,
                   interaction_weight=0)
    only.owned_modules = m.owned_modules
    only.loss(student, batch).loss.backward()
    assert maps.maps["enc_s"].weight.grad.abs().sum() > 0 and maps.maps["dec_t"].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_the_interaction_runs_the_teachers_upper_layers_on_the_students_message():
    student, tok = _model("nano", 1)
    teacher, _ = _model("student", 2)
    batch = _batch(tok, ["12+34=46", "9*9=81.."], 4)
    m = _method(student, teacher, tok, layers="1:1,")
    maps = m.owned_modules["talking"]
    with torch.no_grad():
        base = m.loss(student, batch).metrics
        maps.maps["enc_s"].weight.add_(0.5 * torch.randn_like(maps.maps["enc_s"].weight))  # another message
        moved = m.loss(student, batch).metrics
        assert moved["reply_kd"] != pytest.approx(base["reply_kd"], rel=1e-3)
        assert moved["receive_ce"] != pytest.approx(base["receive_ce"], rel=1e-3)
        assert moved["ce"] == pytest.approx(base["ce"]) and moved["kd"] == pytest.approx(base["kd"])
        upper = teacher.model.layers[2].mlp.down_proj.weight  # above the hearing layer: changes the reply
        upper.mul_(50.0)
        up = m.loss(student, batch).metrics
        assert up["reply_kd"] != pytest.approx(moved["reply_kd"], rel=1e-3)
        assert up["align"] == pytest.approx(moved["align"])  # layer 1's states are below it


def test_bad_layers_and_weights_get_one_clear_message():
    student, tok = _model("nano", 1)
    teacher, _ = _model("student", 2)
    for layers, match in [("1:3,", r"teacher layer 3 is its last \(3\); .*\(0..2\)"),
                          ("2:1,", r"2:1 out of range: the student has 1 layers"),
                          ("1:1,2:2", "one pair STUDENT:TEACHER, got 2")]:
        with pytest.raises(ConfigError, match=match):
            _method(student, teacher, tok, layers=layers)
    with pytest.raises(ConfigError, match="are all 0; nothing to train"):
        Talking.Config(ce_weight=0, kd_weight=0, align_weight=0, roundtrip_weight=0, interaction_weight=0,
                       receive_weight=0)
    with pytest.raises(ConfigError, match="needs at least 2"):
        _method(student, _model("nano", 3)[0], tok)


# --------------------------------------------------------------------------- real runs


def _save(tmp_path, preset, seed=123):
    """A random model of a preset, or (`nano2`) the nano preset with two layers, saved as a teacher."""
    model, tok = load_model(ModelConfig(name=f"preset:{preset.removesuffix('2')}"), seed=seed)
    if preset == "nano2":
        from transformers import LlamaForCausalLM

        torch.manual_seed(seed)
        model = LlamaForCausalLM(model.config.__class__(**{**model.config.to_dict(), "num_hidden_layers": 2}))
    save_model(model, tok, tmp_path / f"t-{preset}")
    return str(tmp_path / f"t-{preset}")


def _run(tmp_path, name, steps, teacher, **args):
    return load_config(TrainRun, None, tiny_overrides(tmp_path / name, steps=steps, **{
        "method": "talking", "teacher.name": teacher, "seed": 1, "train.lr": 0.02, "train.batch_size": 8,
        "data.n_train": 64, **args}))


def _rows(run):
    return [json.loads(l) for l in (Path(run.out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


@pytest.mark.parametrize("teacher", ["teacher", "nano2"])
def test_a_run_trains_the_student_and_maps_and_leaves_the_teacher_as_it_was(tmp_path, monkeypatch, teacher):
    """The nano student (width 16) with the built-in teacher's architecture (width 192), and with a
    two-layer teacher of its own width."""
    path = _save(tmp_path, teacher)
    seen = []
    real = Talking.owned

    def keeps_the_teacher(self):
        out = real(self)
        seen.append(self.run_teacher.teacher.model)
        return out

    monkeypatch.setattr(Talking, "owned", keeps_the_teacher)
    run = _run(tmp_path, "r", 6, path, **{"train.save_every": 6})
    train(run)
    saved = load_file(Path(path) / "model.safetensors")
    (model,) = seen
    assert all(torch.equal(p, saved[k]) for k, p in model.state_dict().items() if k in saved)  # frozen
    width_s, width_t = 16, 192 if teacher == "teacher" else 16
    maps = load_file(tmp_path / "r" / "ckpt" / "step-0000006" / "method" / "talking.safetensors")
    first = MessageMaps(width_s, width_t, min(width_s, width_t), seed=1).state_dict()
    assert maps.keys() == first.keys() and maps["maps.dec_t.weight"].shape == (width_t, min(width_s, width_t))
    assert all(not torch.equal(maps[k], first[k]) for k in first)  # all four maps trained
    initial, _ = load_model(ModelConfig(name="preset:nano"), seed=1)
    trained = load_file(tmp_path / "r" / "model" / "model.safetensors")
    assert any(not torch.equal(trained[k], v) for k, v in initial.state_dict().items() if k in trained)
    rows = _rows(run)
    assert {"ce", "kd", "align", "roundtrip", "reply_kd", "receive_ce"} <= set(rows[0])
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_resume_with_the_maps_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    teacher = _save(tmp_path, "student")
    ref = _run(tmp_path, "ref", 6, teacher, **{"train.save_every": 3})
    train(ref)
    cut = _run(tmp_path, "cut", 6, teacher, **{"train.save_every": 3})
    real = Talking.loss

    def dies_at_step_4(self, model, batch):
        if self.step == 4:
            raise KeyboardInterrupt("an injected interruption")
        return real(self, model, batch)

    monkeypatch.setattr(Talking, "loss", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    assert (tmp_path / "cut" / "ckpt" / "step-0000003").is_dir() and not (tmp_path / "cut" / "model").exists()
    monkeypatch.setattr(Talking, "loss", real)
    train(cut, resume=True)
    for f in ["model/model.safetensors", "ckpt/step-0000006/method/talking.safetensors"]:
        a, b = load_file(tmp_path / "ref" / f), load_file(tmp_path / "cut" / f)
        assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a), f
    assert [r["loss"] for r in _rows(ref)] == [r["loss"] for r in _rows(cut)]


def test_the_cli_lists_and_runs_talking_and_refuses_a_bad_layer_in_one_line(tmp_path, capsys):
    assert "talking" in METHODS
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "talking: Zhao et al. 2023, Talking Models" in listed and "arXiv:2310.03188" in listed
    assert "method_args.layers = 'auto'" in listed and "method_args.receive_weight = 1.0" in listed
    teacher = _save(tmp_path, "student")
    args = tiny_overrides(tmp_path / "run", steps=3, **{"method": "talking", "teacher.name": teacher,
                                                         "method_args.maps": "mlp", "train.save_every": 3})
    assert main(["train", *args]) == 0
    err = capsys.readouterr().err
    assert "talking: student layer 1 of 1 (width 16) <-> teacher layer 1 of 3 (width 64)" in err, err
    assert (tmp_path / "run" / "ckpt" / "step-0000003" / "method" / "talking.safetensors").is_file()
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    rc = main(["train", *tiny_overrides(tmp_path / "bad", **{"method": "talking", "teacher.name": teacher,
                                                            "method_args.layers": "1:3,"})])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "teacher layer 3 is its last" in err, err
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_maps(tmp_path):
    """The student and the maps are each called several times per micro-batch (DDP-wrapped on two
    processes): two processes at grad_accum 1 give one process's loss curve at grad_accum 2."""
    import os
    import subprocess
    import sys

    from conftest import free_port

    teacher = _save(tmp_path, "student")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(Path(__file__).parent.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    base = {"method": "talking", "teacher.name": teacher, "train.batch_size": 4, "eval.n": 2}
    one = tiny_overrides(tmp_path / "one", steps=4, **{**base, "train.grad_accum": 2})
    two = tiny_overrides(tmp_path / "two", steps=4, **{**base, "train.grad_accum": 1})
    cli = [sys.executable, "-m", "retort.cli", "train"]
    subprocess.run([*cli, *one], check=True, env=env, capture_output=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                "-m", "retort.cli", "train", *two]
    proc = subprocess.run(launcher, check=False, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    la = [r["loss"] for r in _rows(SimpleNamespace(out=tmp_path / "one"))]
    lb = [r["loss"] for r in _rows(SimpleNamespace(out=tmp_path / "two"))]
    assert len(la) == len(lb) == 4 and all(a == pytest.approx(b, rel=1e-5) for a, b in zip(la, lb)), (la, lb)

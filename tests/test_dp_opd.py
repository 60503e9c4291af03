"""dp_opd (DP-OPD, arXiv:2604.04461): the per-record loss against a float64 reference on a
constructed batch, lmbda=0 is off-policy DP-KD (`kd` + privacy.*) on the same records, the
per-record prefix/continuation split and on-policy draw, a few DP steps of the nano preset, exact
resume after kill -9, and the refusals."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_while_training, lm_method, peaked_teacher, tiny_overrides
from safetensors.torch import load_file

from retort.cli import main
from retort.errors import ConfigError
from retort.lm.config import ModelConfig
from retort.lm.data.collate import IGNORE, Encoded, collate
from retort.lm.models import load_model

pytest.importorskip("opacus")



def _method(tmp_path, name, private=True, **cfg):
    extra = {"privacy.noise_multiplier": 1.0} if private else {}
    method, student, _ = lm_method(tmp_path, name, {"data.n_train": 16, **extra}, **cfg)
    return method, student


def _reference(student, teacher, batch, beta, ce_weight, record_mean):
    """sum_i (1/|y_i|)^[record_mean] sum_t [JSD_beta(P_T || P_S) + ce_weight * CE], in float64, by hand."""
    with torch.no_grad():
        zs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
        zt = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    total = 0.0
    for i in range(batch["input_ids"].shape[0]):
        terms = []
        for t in range(batch["input_ids"].shape[1] - 1):
            y = int(batch["labels"][i, t + 1])
            if y == IGNORE:
                continue
            ps, pt = zs[i, t].softmax(-1), zt[i, t].softmax(-1)
            m = beta * pt + (1 - beta) * ps
            jsd = beta * (pt * (pt / m).log()).sum() + (1 - beta) * (ps * (ps / m).log()).sum()
            terms.append(float(jsd) - ce_weight * float(ps[y].log()))
        total += sum(terms) / (len(terms) if record_mean else 1)
    return total


@pytest.mark.parametrize("record_mean", [True, False])
def test_the_loss_is_the_per_record_jsd_of_a_float64_reference(tmp_path, record_mean):
    m, student = _method(tmp_path, "dp_opd", beta=0.3, ce_weight=0.5, record_mean=record_mean)
    teacher = m.run_teacher.open(student).model
    pad = m.ctx.tokenizer.pad_token_id
    # two records of different lengths, the second with a longer prefix: labels on the continuations only
    ids = [[5, 9, 12, 7, 3, 30, 8], [4, 11, 6, 22, 19]]
    labels = [[IGNORE, IGNORE, 12, 7, 3, 30, 8], [IGNORE, IGNORE, IGNORE, 22, 19]]
    batch = collate([Encoded(i, lab) for i, lab in zip(ids, labels)], pad)
    out = m.loss(student, batch)
    assert float(out.loss.detach()) == pytest.approx(_reference(student, teacher, batch, 0.3, 0.5, record_mean), rel=1e-5)
    assert out.count == 2  # records, the unit DP-SGD clips


def test_lmbda_0_is_off_policy_dp_kd_on_the_same_records(tmp_path):
    opd, student = _method(tmp_path, "dp_opd", lmbda=0.0, prefix_tokens=0, record_mean=False, beta=0.5)
    kd, _ = _method(tmp_path, "kd", divergence="jsd", beta=0.5)
    assert opd.private_records() == kd.private_records() == 16
    rows = torch.tensor([0, 3, 7, 11])
    a, b = opd.records_batch(rows), kd.records_batch(rows)
    assert a["stats"]["on_policy"] == 0.0
    for k in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(a[k], b[k])
    assert float(opd.loss(student, a).loss) == pytest.approx(float(kd.loss(student, b).loss), rel=1e-6)
    # the paper's per-record mean: each record's kd loss divided by its continuation's tokens
    mean, _ = _method(tmp_path, "dp_opd", lmbda=0.0, prefix_tokens=0, record_mean=True, beta=0.5)
    per = [float(kd.loss(student, kd.records_batch(r.view(1))).loss) / kd.count(kd.records_batch(r.view(1)))
           for r in rows]
    assert float(mean.loss(student, mean.records_batch(rows)).loss) == pytest.approx(sum(per), rel=1e-5)


def test_prefix_and_continuation_per_record(tmp_path):
    m, _ = _method(tmp_path, "dp_opd", lmbda=1.0, prefix_tokens=3, max_new_tokens=6)
    records = m._records()
    rows = torch.tensor([1, 2, 5])
    batch = m.records_batch(rows)
    assert batch["stats"]["on_policy"] == 1.0
    for r, ids, lab in zip(rows.tolist(), batch["input_ids"], batch["labels"]):
        rec = records[r]
        cut = rec.prompt_len + 3
        assert ids[:cut].tolist() == rec.input_ids[:cut]  # the record's own prefix, continued by the student
        assert (lab[:cut] == IGNORE).all() and (lab[cut:] != IGNORE).any()
        assert int((lab[cut:] != IGNORE).sum()) <= 6 + 1  # at most max_new_tokens (+ EOS)
    off, _ = _method(tmp_path, "dp_opd", lmbda=0.0, prefix_tokens=3)
    ref = off.records_batch(rows)
    assert all(torch.equal(ref["input_ids"][j, :len(records[r].input_ids)], torch.tensor(records[r].input_ids))
               for j, r in enumerate(rows.tolist()))
    pad = m.ctx.tokenizer.pad_token_id
    sampled = Encoded([7, 8, 9, 5, pad, 6], [IGNORE, IGNORE, 9, 5, pad, 6])
    assert m.cut_at_pad(sampled) == Encoded([7, 8, 9, 5], [IGNORE, IGNORE, 9, 5])  # a sampled pad ends it
    assert m.cut_at_pad(records[1]) == records[1]
    half, _ = _method(tmp_path, "dp_opd", lmbda=0.5)
    draws = [[half.on_policy(i) for i in range(16)] for half.step in range(3)]
    assert draws == [[half.on_policy(i) for i in range(16)] for half.step in range(3)]  # repeatable (resume)
    assert 0 < sum(map(sum, draws)) < 48 and draws[0] != draws[1]  # per record and per step


def test_dp_opd_needs_privacy_and_gkd_under_privacy_points_to_it(tmp_path, capsys):
    with pytest.raises(ConfigError, match="trains under DP-SGD"):
        _method(tmp_path, "dp_opd", private=False)
    out = tmp_path / "gkd"
    capsys.readouterr()
    assert main(["train", *tiny_overrides(out, steps=2, method="gkd"), "teacher.name=preset:nano",
                 "privacy.noise_multiplier=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dp_opd" in err and not out.exists()


def _args(tmp_path, steps, **extra):
    teacher = peaked_teacher(tmp_path / "teacher")
    return ["train", *tiny_overrides(None, steps=steps, **{
        "method": "dp_opd", "teacher.name": str(teacher), "privacy.noise_multiplier": 0.9, "train.lr": 0.01,
        "data.n_train": 32, "method_args.prefix_tokens": 2, "method_args.max_new_tokens": 6, "threads": 1,
        "eval.n": 4, **extra})[1:]]


def test_a_few_dp_steps_train_the_student(tmp_path):
    out = tmp_path / "run"
    assert main([*_args(tmp_path, 3), f"out={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())["privacy"]
    assert summary["steps"] == 3 and summary["records"] == 32 and summary["epsilon"] > 0
    start, _ = load_model(ModelConfig(name="preset:nano"), seed=0)
    trained = load_file(out / "model" / "model.safetensors")
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in trained.items() if k in start.state_dict())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert all("epsilon" in r for r in rows) and any(r.get("on_policy", 0) > 0 for r in rows)


@pytest.mark.slow  # two processes and three runs (~25 s): past this file's share of the default tier
def test_sigkill_then_resume_is_exact(tmp_path):
    args = _args(tmp_path, 8, **{"train.save_every": 2})
    assert main([*args, f"out={tmp_path / 'ref'}"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).parent.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cut = tmp_path / "cut"
    assert kill_while_training([sys.executable, "-m", "retort.cli", "train", "--resume", *args[1:], f"out={cut}"],
                               env, cut, targets=("step-0000004",)) == 1
    assert main(["train", "--resume", *args[1:], f"out={cut}"]) == 0
    a = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    b = load_file(cut / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pa, pb = (json.loads((d / "summary.json").read_text())["privacy"] for d in (tmp_path / "ref", cut))
    assert pa == pb and pa["steps"] == 8

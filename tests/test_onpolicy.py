"""On-policy methods: rollouts in the loop, gkd (lmbda=0 is kd), rkl_pg, opsd (zero loss for identical
contexts), tsd_kd (ListMLE direction, entropy term on valid tokens), and the KEPO gate."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import peaked_teacher, tiny_overrides
from retort.lm.teachers import LocalTeacher
from retort.config import load_config
from retort.lm.config import ModelConfig, TrainRun
from retort.lm.data.collate import IGNORE, Encoded, collate
from retort.lm.methods import METHODS
from retort.lm.methods.base import BatchPlan, MethodContext
from retort.lm.methods.rkl_pg import discounted_returns
from retort.lm.methods.tsd_kd import entropy_prefix, listmle
from retort.lm.models import load_model
from retort.lm.tasks import get_task
from retort.train import train


def _run(tmp_path, name, method, steps=3, **args):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / name, steps=steps, **{
        "method": method, "teacher.name": peaked_teacher(tmp_path / "teacher"), "seed": 1, "train.lr": 0.02,
        **({} if method in ("sft", "kd") else {"method_args.max_new_tokens": 12}), **args}))
    train(run)
    rows = [json.loads(line) for line in (Path(run.out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return rows, load_file(Path(run.out) / "model" / "model.safetensors")


def _method(tmp_path, name, overrides=(), **cfg):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **{"method": name, "teacher.name":
                                                                         peaked_teacher(tmp_path / "teacher")}))
    student, tok = load_model(ModelConfig(name="preset:nano"), seed=5)
    ctx = MethodContext(run=run, task=get_task(run.task), tokenizer=tok, load_teacher=lambda: LocalTeacher("t", *load_model(run.teacher)),
                        student=lambda: student,
                        load_initial_student=lambda: load_model(ModelConfig(name="preset:nano"), seed=5))
    cls = METHODS[name]
    return cls(ctx, cls.Config(**cfg)), student


def test_gkd_with_lmbda_0_is_kd_on_the_same_batches(tmp_path):
    kd_rows, kd_w = _run(tmp_path, "kd", "kd", **{"method_args.divergence": "jsd"})
    gkd_rows, gkd_w = _run(tmp_path, "gkd", "gkd", **{"method_args.lmbda": 0.0, "method_args.temperature": 1.0})
    assert [r["loss"] for r in gkd_rows] == pytest.approx([r["loss"] for r in kd_rows], rel=1e-6)
    assert all(torch.equal(kd_w[k], gkd_w[k]) for k in kd_w)
    assert all(r["on_policy"] == 0.0 for r in gkd_rows)


def test_rollout_batches_sample_the_current_student_and_mask_prompts(tmp_path):
    gkd, student = _method(tmp_path, "gkd", lmbda=1.0, max_new_tokens=9)
    plan = BatchPlan(0, 1, 1, 4, 0, 0)
    batch = next(gkd.batches(plan))
    assert batch["stats"]["on_policy"] == 1.0
    for x in batch["items"]:
        n_prompt = x.prompt_len
        assert x.labels[:n_prompt] == [IGNORE] * n_prompt
        completion = x.input_ids[n_prompt:]
        assert 1 <= len(completion) <= 10  # at most max_new_tokens, plus EOS when it stopped
        assert x.labels[n_prompt:] == completion
    # the same micro-batch index draws the same rollouts (exact resume)
    again = next(gkd.batches(plan))
    assert torch.equal(again["input_ids"], batch["input_ids"])
    # a changed student samples something else
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    changed = next(gkd.batches(plan))
    assert not torch.equal(changed["input_ids"], batch["input_ids"])
    out = gkd.loss(student, batch)
    assert out.count == gkd.count(batch) > 0 and out.loss.item() > 0


def test_rollout_dtype_samples_from_a_bf16_copy_and_only_with_the_fast_engine(tmp_path, monkeypatch):
    from retort.errors import ConfigError
    from retort.lm.methods import onpolicy

    seen = []
    real = onpolicy.generate_ids
    monkeypatch.setattr(onpolicy, "generate_ids", lambda *a, **k: seen.append(k["dtype"]) or real(*a, **k))
    gkd, student = _method(tmp_path, "gkd", lmbda=1.0, max_new_tokens=6, rollout_dtype="bfloat16")
    plan = BatchPlan(0, 1, 1, 4, 0, 0)
    half = next(gkd.batches(plan))
    full = next(_method(tmp_path, "gkd", lmbda=1.0, max_new_tokens=6)[0].batches(plan))
    assert seen == [torch.bfloat16, None]
    assert next(student.parameters()).dtype == torch.float32
    assert half["input_ids"].shape[0] == full["input_ids"].shape[0] == 4
    for engine in ("hf", "vllm"):
        with pytest.raises(ConfigError, match="rollout_dtype=bfloat16"):
            _method(tmp_path, "gkd", rollout_dtype="bfloat16", engine=engine)


def test_gate_keeps_exactly_the_verified_rollouts(tmp_path, monkeypatch):
    gkd, student = _method(tmp_path, "gkd", lmbda=1.0, max_new_tokens=9, gate=True)
    items = gkd.examples()[:4]
    # the verifier is the task's; make it accept rollouts of even index only
    calls = []

    def verify(text, ref, question=None):
        calls.append(text)
        return len(calls) % 2 == 1

    monkeypatch.setattr(gkd.ctx.task, "verify", verify)
    out, stats = gkd.rollout(items, student, seed=0, gate=True)
    kept = [any(lab != IGNORE for lab in y.labels) for y in out]
    assert kept == [True, False, True, False]
    assert stats["kept"] == 0.5 and stats["rollout_correct"] == 0.5
    out, stats = gkd.rollout(items, student, seed=0, gate=False)
    assert all(any(lab != IGNORE for lab in y.labels) for y in out) and stats["kept"] == 1.0


def test_opsd_loss_is_zero_when_both_contexts_are_the_same(tmp_path):
    opsd, student = _method(tmp_path, "opsd", privileged_template="{prompt}", max_new_tokens=8)
    batch = next(opsd.batches(BatchPlan(0, 1, 1, 4, 0, 0)))
    out = opsd.loss(student, batch)
    same = out.loss.item() / out.count
    assert out.count > 0 and abs(same) < 1e-8  # zero up to float32 rounding of log(exp(x))
    # with the worked solution in the teacher's context, the distributions differ
    opsd2, student2 = _method(tmp_path / "b", "opsd", max_new_tokens=8)
    assert opsd2.template == "{prompt}{solution}\n{prompt}"  # auto, for a character-level preset
    out2 = opsd2.loss(student2, next(opsd2.batches(BatchPlan(0, 1, 1, 4, 0, 0))))
    assert out2.loss.item() / out2.count > 1000 * abs(same) + 1e-7


def test_opsd_teacher_batch_labels_the_same_completion_under_the_privileged_prompt(tmp_path):
    opsd, student = _method(tmp_path, "opsd", max_new_tokens=8)
    batch = next(opsd.batches(BatchPlan(0, 1, 1, 4, 0, 0)))
    tb = opsd.teacher_batch(batch["items"])
    for i, x in enumerate(batch["items"]):
        s_lab = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        t_lab = tb["labels"][i][tb["labels"][i] != IGNORE].tolist()
        assert s_lab == t_lab
        assert tb["attention_mask"][i].sum() > batch["attention_mask"][i].sum()  # longer context


def test_listmle_standard_raises_the_teachers_favourite_and_as_released_lowers_it():
    # equal student logits for K candidates already in the teacher's order (favourite first)
    for direction, sign in (("standard", 1), ("as_released", -1)):
        s = torch.zeros(1, 5, requires_grad=True)
        listmle(s, direction).sum().backward()
        # gradient descent moves s by -grad: the favourite goes up in standard mode
        assert sign * (-s.grad[0, 0]) > 0
        assert sign * (-s.grad[0, -1]) < 0


def test_listmle_standard_is_the_plackett_luce_nll_of_the_order():
    s = torch.tensor([[2.0, 0.5, -1.0]])
    c = s - s.mean()
    p1 = torch.softmax(c[0], 0)[0]
    p2 = torch.softmax(c[0, 1:], 0)[0]
    assert listmle(s).item() == pytest.approx(-(torch.log(p1) + torch.log(p2)).item(), rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_rkl_pg_loss_and_gradient_match_the_policy_gradient_written_out(tmp_path, gamma):
    """-sum_t sg(A_t) log p_S(y_t), A_t the discounted sum of log p_T - log p_S, each sequence scored
    alone in float64, on a padded batch of completions of different lengths."""
    method, student = _method(tmp_path, "rkl_pg", gamma=gamma)
    teacher = method.teacher(student)
    tok = method.ctx.tokenizer
    g = torch.Generator().manual_seed(1)
    seqs = [([1, *torch.randint(4, 100, (n_p,), generator=g).tolist()],
             torch.randint(4, 100, (n_c,), generator=g).tolist()) for n_p, n_c in [(3, 5), (6, 2), (2, 7)]]
    items = [Encoded(p + c, [IGNORE] * len(p) + c) for p, c in seqs]
    batch = collate(items, tok.pad_token_id)
    out = method.loss(student, batch)
    out.loss.backward()
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    want = 0.0
    for p, c in seqs:
        ids = torch.tensor([p + c])
        lps = torch.log_softmax(student(ids).logits[0].double(), -1)
        with torch.no_grad():
            lpt = torch.log_softmax(teacher(ids).logits[0].double(), -1)
        s_tok = torch.stack([lps[len(p) + t - 1, c[t]] for t in range(len(c))])
        t_tok = torch.stack([lpt[len(p) + t - 1, c[t]] for t in range(len(c))])
        r = (t_tok - s_tok).detach()
        adv = torch.stack([sum(gamma ** (u - t) * r[u] for u in range(t, len(c))) for t in range(len(c))])
        want = want - (adv * s_tok).sum()
    want.backward()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-5)
    for a, p in zip(got, student.parameters()):
        torch.testing.assert_close(a, p.grad.float(), rtol=1e-3, atol=1e-5)


def test_entropy_prefix_and_discounted_returns():
    assert entropy_prefix(torch.tensor([1.0, 1.0, 8.0]), 0.1) == 1
    assert entropy_prefix(torch.tensor([0.05, 0.05, 9.9]), 0.5) == 3
    r = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    m = torch.tensor([[False, True, True, True]])
    assert discounted_returns(r, m, 0.0).tolist() == [[0.0, 1.0, 2.0, 3.0]]
    assert discounted_returns(r, m, 0.5).tolist() == [[0.0, 1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]]


@pytest.mark.parametrize("method,args", [
    ("gkd", {}), ("rkl_pg", {}), ("tsd_kd", {}), ("opsd", {"data.source": "solutions"}),
    ("gkd", {"method_args.gate": True}), ("tsd_kd", {"method_args.listmle_direction": "as_released"}),
    ("gkd", {"method_args.rollout_dtype": "bfloat16"}),
])
def test_each_on_policy_method_trains_and_logs(tmp_path, method, args):
    rows, _ = _run(tmp_path, method, method, steps=3, **args)
    assert len(rows) == 3 and all(r["loss"] == r["loss"] for r in rows)
    assert all(r["on_policy"] == 1.0 and "rollout_tokens" in r and "kept" in r for r in rows)

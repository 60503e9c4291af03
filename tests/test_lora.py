"""LoRA students (`student.lora.r > 0`, optional extra peft): config checks, the missing-peft error,
the fast engine on LoRA weights, OPSD's fixed teacher as the student with adapters disabled (zero
loss at step 0, still the base model after training, no second copy loaded), and runs through the
CLI that resume exactly and export a merged model that `retort eval` reads."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import peaked_teacher, tiny_overrides
from retort.cli import main
from retort.config import load_config
from retort.lm.config import LoraConfig, ModelConfig, TrainRun
from retort.errors import ConfigError
from retort.lm.methods import METHODS
from retort.lm.methods.base import BatchPlan, MethodContext
from retort.lm.models import load_model
from retort.lm.tasks import get_task
from retort.train import train


def _lora_nano(seed=5, r=4, **kw):
    from retort.lm.models import lora

    base, tok = load_model(ModelConfig(name="preset:nano"), seed=seed)
    return lora.wrap(base, LoraConfig(r=r, **kw)), tok


def _opsd(tmp_path, student, tok, **cfg):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", method="opsd"))

    def no_second_copy():
        raise AssertionError("a LoRA student's fixed teacher must not load the initial student again")

    ctx = MethodContext(run=run, task=get_task(run.task), tokenizer=tok, student=lambda: student,
                        load_initial_student=no_second_copy)
    return METHODS["opsd"](ctx, METHODS["opsd"].Config(max_new_tokens=8, **cfg))


def test_lora_config_is_checked():
    run = load_config(TrainRun, None, ["student.lora.r=8"])
    assert run.student.lora.r == 8 and "q_proj" in run.student.lora.target_modules
    assert load_config(TrainRun, None, []).student.lora.r == 0  # off by default
    with pytest.raises(ConfigError, match=r"student.lora.r=-1 is out of range"):
        load_config(TrainRun, None, ["student.lora.r=-1"])
    with pytest.raises(ConfigError, match=r"student.lora.target_modules may not include lm_head"):
        load_config(TrainRun, None, ["student.lora.r=8", "student.lora.target_modules=[q_proj,lm_head]"])
    with pytest.raises(ConfigError, match=r"valid keys under 'student.lora': r, alpha, dropout, target_modules"):
        load_config(TrainRun, None, ["student.lora.rank=8"])


def test_missing_peft_names_the_key_and_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **{"student.lora.r": 4}))
    with pytest.raises(ConfigError, match=r"student.lora.r=4 .*pip install peft"):
        train(run)
    assert not (tmp_path / "r").exists()


def test_unknown_target_module_is_a_config_error(tmp_path):
    pytest.importorskip("peft")
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **{
        "student.lora.r": 4, "student.lora.target_modules": "[q_proj,qkv_proj]"}))
    with pytest.raises(ConfigError, match=r"no linear layer named qkv_proj; its linear layers: .*q_proj"):
        train(run)


def test_vllm_engine_is_refused_for_lora_students(tmp_path):
    pytest.importorskip("peft")
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **{
        "method": "gkd", "student.lora.r": 4, "method_args.engine": "vllm"}))
    with pytest.raises(ConfigError, match="engine=vllm"):
        train(run)


def test_fast_engine_samples_the_lora_model_and_its_base_with_adapters_disabled():
    pytest.importorskip("peft")
    from retort.lm.models.lora import AdaptersDisabled
    from retort.lm.rollout import fast
    from retort.lm.rollout.generate import generate_ids

    base, tok = load_model(ModelConfig(name="preset:student"), seed=3)
    model, _ = load_model(ModelConfig(name="preset:student"), seed=3)
    from retort.lm.models import lora

    model = lora.wrap(model, LoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter
    assert fast.supports(model)
    prompts = [[1] + list(range(10, 10 + k)) for k in range(1, 8)]
    hf = [c[0].token_ids for c in generate_ids(model, tok, prompts, max_new_tokens=16, engine="hf")]
    ours = [c[0].token_ids for c in generate_ids(model, tok, prompts, max_new_tokens=16, engine="fast")]
    plain = [c[0].token_ids for c in generate_ids(base, tok, prompts, max_new_tokens=16, engine="fast")]
    assert hf == ours and ours != plain  # the adapters are applied, as PEFT's own forward applies them
    with AdaptersDisabled(model).disabled() as m:
        off = [c[0].token_ids for c in generate_ids(m, tok, prompts, max_new_tokens=16, engine="fast")]
    assert off == plain


def test_opsd_lora_teacher_is_the_student_with_adapters_disabled_and_loss_is_zero_at_step_0(tmp_path):
    pytest.importorskip("peft")
    student, tok = _lora_nano()
    opsd = _opsd(tmp_path, student, tok, privileged_template="{prompt}")
    batch = next(opsd.batches(BatchPlan(0, 1, 1, 4, 0, 0)))
    student.train()
    out = opsd.loss(student, batch)
    zero = out.loss.item() / out.count
    assert out.count > 0 and abs(zero) < 1e-8  # B = 0: teacher == student
    assert opsd.teacher(student).model is student  # no second copy of the weights
    out.loss.backward()  # the gradient reaches the adapters only
    assert all((p.grad is not None) == ("lora_" in n) for n, p in student.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for n, p in student.named_parameters() if "lora_" not in n)
    # with the worked solution in the teacher's context the loss is not zero
    opsd2 = _opsd(tmp_path / "b", student, tok)
    out2 = opsd2.loss(student, next(opsd2.batches(BatchPlan(0, 1, 1, 4, 0, 0))))
    assert out2.loss.item() / out2.count > 1000 * abs(zero) + 1e-7


def test_opsd_lora_teacher_stays_the_original_base_model_while_the_student_moves(tmp_path):
    pytest.importorskip("peft")
    student, tok = _lora_nano()
    original, _ = load_model(ModelConfig(name="preset:nano"), seed=5)  # the same weights, loaded apart
    opsd = _opsd(tmp_path, student, tok)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=0.05)
    it = opsd.batches(BatchPlan(0, 1, 1, 4, 0, 0))
    student.train()
    losses = []
    for _ in range(4):
        out = opsd.loss(student, next(it))
        (out.loss / out.count).backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item() / out.count)
    assert all(torch.isfinite(torch.tensor(losses)))
    x = torch.randint(4, 90, (3, 11))
    teacher = opsd.teacher(student)
    with torch.no_grad():
        want = original(input_ids=x).logits
        got = teacher(input_ids=x).logits
        now = student(input_ids=x).logits
    assert torch.equal(got, want)  # the base weights never moved, and nothing of the adapter leaks in
    assert (now - want).abs().max() > 1e-3  # the student did move
    assert student.training  # the teacher call left the student as it was: training, adapters on
    assert not torch.equal(student(input_ids=x).logits, want)


def _rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]


def test_lora_sft_from_the_cli_resumes_exactly_and_exports_a_merged_model(tmp_path, capsys):
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "r"
    args = ["train", *tiny_overrides(run, steps=4, **{"student.lora.r": 4, "student.lora.alpha": 8,
                                                       "train.save_every": 2, "train.lr": 0.05,
                                                       "train.warmup_steps": 0})]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    base, _ = load_model(ModelConfig(name="preset:nano"))
    targets = [m for n, m in base.named_modules() if n.rsplit(".", 1)[-1] in LoraConfig().target_modules]
    assert summary["trainable_params"] == sum(4 * (m.in_features + m.out_features) for m in targets)
    assert summary["params"] == sum(p.numel() for p in base.parameters()) + summary["trainable_params"]
    # checkpoints hold the adapter (safetensors), the exported model is plain, adapters merged in
    ckpt = run / "ckpt" / "step-0000004" / "model"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    assert all("lora_" in k for k in load_file(ckpt / "adapter_model.safetensors"))
    exported = load_file(run / "model" / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in exported)
    init = base.state_dict()
    changed = {k for k in exported if not torch.equal(exported[k], init[k])}
    assert changed and all(k.rsplit(".", 2)[-2] in LoraConfig().target_modules for k in changed)
    merged = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    with_adapter = PeftModel.from_pretrained(load_model(ModelConfig(name="preset:nano"))[0], ckpt).eval()
    x = torch.randint(4, 90, (2, 9))
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=x).logits, with_adapter(input_ids=x).logits, atol=1e-5)
    # resume from step 2 (as after a crash) and land on the same weights
    before = [r["loss"] for r in _rows(run)]
    for p in (run / "ckpt" / "step-0000004", run / "model"):
        for f in sorted(p.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        p.rmdir()
    assert main([args[0], "--resume", *args[1:]]) == 0
    again = load_file(run / "model" / "model.safetensors")
    assert again.keys() == exported.keys() and all(torch.equal(again[k], exported[k]) for k in exported)
    assert [r["loss"] for r in _rows(run)] == before
    # and `retort eval` reads the exported model
    res = tmp_path / "eval.json"
    assert main(["eval", "-m", f"student={run / 'model'}", "--json", str(res), "eval.n=4",
                 "eval.max_new_tokens=6"]) == 0
    assert json.loads(res.read_text())["student"]["n"] == 4
    # a checkpoint's adapter is not a whole model: the error says so and where the model is
    adapter = next((run / "ckpt").glob("step-*/model"))
    assert main(["eval", "-m", f"student={adapter}", "eval.n=1"]) == 2
    assert "LoRA adapter" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["kd", "opsd"])
def test_lora_kd_and_opsd_train_through_the_loop(tmp_path, method):
    pytest.importorskip("peft")
    extra = {"method_args.max_new_tokens": 10} if method == "opsd" else {"teacher.name": peaked_teacher(tmp_path / "t")}
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / method, steps=3, **{
        "method": method, "student.lora.r": 4, "train.lr": 0.05, "seed": 1, **extra}))
    summary = train(run)
    rows = _rows(run.out)
    assert len(rows) == 3 and all(r["loss"] == r["loss"] and r["kd"] >= 0 for r in rows)
    assert summary["trainable_params"] < summary["params"]
    if method == "opsd":
        assert rows[0]["kd"] > 0 and all(r["on_policy"] == 1.0 for r in rows)
    exported = load_file(Path(run.out) / "model" / "model.safetensors")
    init = load_model(run.student, seed=run.seed)[0].state_dict()
    assert set(exported) <= set(init)  # (lm_head is tied to the embedding)
    assert any(not torch.equal(exported[k], init[k]) for k in exported if "q_proj" in k)
    assert all(torch.equal(exported[k], init[k]) for k in exported if "norm" in k or "embed" in k)


def test_a_run_from_before_student_lora_still_resumes(tmp_path):
    import yaml

    args = tiny_overrides(tmp_path / "r", steps=2)
    train(load_config(TrainRun, None, args))
    cfg_file = tmp_path / "r" / "config.yaml"
    old = yaml.safe_load(cfg_file.read_text())
    del old["student"]["lora"]  # what an older retort wrote
    cfg_file.write_text(yaml.safe_dump(old, sort_keys=False))
    assert train(load_config(TrainRun, None, args), resume=True)["steps"] == 2
    with pytest.raises(ConfigError, match="config differs .* at student.lora.r"):
        train(load_config(TrainRun, None, args + ["student.lora.r=4"]), resume=True)


def test_dpo_lora_reference_is_the_student_with_adapters_disabled(tmp_path):
    """DPO's frozen reference for a LoRA student: the same weights with adapters off (no second
    copy loaded); log 2 at the start, and after an update it is still the original model."""
    pytest.importorskip("peft")
    import math

    from retort.lm.data.collate import IGNORE, Encoded, collate
    from retort.lm.methods.base import sequence_logps
    from retort.lm.methods.pairs import Pair

    student, tok = _lora_nano(r=4)
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", method="dpo"))

    def no_second_copy():
        raise AssertionError("a LoRA student's DPO reference must not load the initial student again")

    ctx = MethodContext(run=run, task=get_task(run.task), tokenizer=tok, student=lambda: student,
                        load_initial_student=no_second_copy)
    dpo = METHODS["dpo"](ctx, METHODS["dpo"].Config(beta=0.5))
    p, w, l_ = [1, 40, 41], [50, 51, 2], [60, 2]
    pair = Pair(p + w, [IGNORE] * 3 + w, rejected=Encoded(p + l_, [IGNORE] * 3 + l_))
    batch = collate([pair, pair.rejected], tok.pad_token_id)
    batch["n_pairs"] = 1
    student.train()
    assert dpo.loss(student, batch).loss.item() == pytest.approx(math.log(2), rel=1e-6)
    base, _ = load_model(ModelConfig(name="preset:nano"), seed=5)
    before = sequence_logps(base, batch)[0]
    opt = torch.optim.SGD([q for q in student.parameters() if q.requires_grad], lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        dpo.loss(student, batch).loss.backward()
        opt.step()
    assert torch.allclose(sequence_logps(dpo.reference(), batch)[0], before, atol=1e-6)
    assert dpo.loss(student, batch).loss.item() < math.log(2)

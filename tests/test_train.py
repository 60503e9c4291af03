import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port, kill_while_training, tiny_overrides
from retort.config import load_config
from retort.lm.config import TrainRun
from retort.errors import ConfigError
from retort.lm.methods import METHODS, BatchPlan, LossOut, MethodContext
from retort.lm.methods.base import token_nll_sum
from retort.lm.methods.sft import SFT
from retort.lm.models import load_model
from retort.lm.tasks import get_task
from retort.train import NonFiniteLoss, train
from retort.train.schedule import warmup_cosine

CLI = [sys.executable, "-m", "retort.cli"]


def metrics(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_schedule_warms_up_then_decays_to_min():
    f = lambda s: warmup_cosine(s, total=100, warmup=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_short_run_loss_falls_and_params_change(tmp_path):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", steps=40, **{
        "train.lr": 0.01, "train.batch_size": 16, "data.n_train": 256}))
    init, _ = load_model(run.student, seed=run.seed)
    summary = train(run)
    rows = metrics(run.out)
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert last < 0.7 * first, (first, last)
    trained = load_file(Path(run.out) / "model" / "model.safetensors")
    changed = [k for k, v in init.state_dict().items() if k in trained and not torch.equal(v, trained[k])]
    assert len(changed) == len(trained)
    assert summary["steps"] == 40 and (Path(run.out) / "config.yaml").is_file()


def test_loss_is_normalised_by_tokens_across_accumulation(tmp_path):
    """The logged loss of step 1 is the token-weighted mean over both micro-batches of the step,
    not the mean of per-micro-batch means."""
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", steps=1, **{
        "train.grad_accum": 2, "train.batch_size": 3, "data.source": "solutions"}))
    model, tok = load_model(run.student, seed=run.seed)
    method = SFT(MethodContext(run=run, task=get_task(run.task), tokenizer=tok), SFT.Config())
    it = method.batches(BatchPlan(0, 1, 2, 3, 0, run.seed))
    with torch.no_grad():
        sums = [token_nll_sum(model, next(it)) for _ in range(2)]
    assert sums[0][1] != sums[1][1]  # different token counts, so the two averages differ
    expected = float(sum(s for s, _ in sums)) / sum(n for _, n in sums)
    train(run)
    assert metrics(run.out)[0]["loss"] == pytest.approx(expected, rel=1e-5)


@dataclass
class _NaNConfig:
    at_step: int = 3


class _NaNAfter(SFT):
    """Controlled input: an sft whose loss becomes NaN at a chosen step."""

    name = "test_nan"
    Config = _NaNConfig

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self.calls = 0

    def loss(self, model, batch):
        out = super().loss(model, batch)
        self.calls += 1
        if self.calls >= self.cfg.at_step:
            return LossOut(out.loss * float("nan"), out.count)
        return out


def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "test_nan", _NaNAfter)
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", steps=10, **{
        "method": "test_nan", "method_args.at_step": 4, "train.save_every": 2}))
    with pytest.raises(NonFiniteLoss, match=r"step 4: loss is nan.*step-0000002"):
        train(run)
    ckpts = sorted(p.name for p in (Path(run.out) / "ckpt").iterdir())
    assert ckpts == ["step-0000002"]
    weights = load_file(Path(run.out) / "ckpt" / "step-0000002" / "model" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_run_dir_is_not_mixed_between_runs(tmp_path):
    args = tiny_overrides(tmp_path / "r", steps=2)
    train(load_config(TrainRun, None, args))
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(load_config(TrainRun, None, args))
    with pytest.raises(ConfigError, match="config differs .* at train.lr"):
        train(load_config(TrainRun, None, args + ["train.lr=0.5"]), resume=True)
    again = train(load_config(TrainRun, None, args), resume=True)  # a finished run resumes to the same end
    assert again["steps"] == 2


def test_unknown_method_args_are_rejected(tmp_path):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r") + ["method_args.foo=1"])
    with pytest.raises(ConfigError, match="unknown key 'method_args.foo'"):
        train(run)
    assert not (tmp_path / "r").exists()


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(Path(__file__).parent.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_sigkill_then_resume_is_bitwise_equal_to_uninterrupted(tmp_path):
    common = tiny_overrides("X", steps=24, **{"train.save_every": 3, "data.n_train": 200, "eval.n": 2})
    ref = [a if not a.startswith("out=") else f"out={tmp_path / 'ref'}" for a in common]
    cut = [a if not a.startswith("out=") else f"out={tmp_path / 'cut'}" for a in common]
    subprocess.run(CLI + ["train", *ref], check=True, env=_env(), capture_output=True)
    kills = kill_while_training(CLI + ["train", "--resume", *cut], _env(), tmp_path / "cut")  # twice, at two moments
    assert kills >= 1
    subprocess.run(CLI + ["train", "--resume", *cut], check=True, env=_env(), capture_output=True)
    a = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in metrics(tmp_path / "cut") if "loss" in r]
    assert steps == list(range(1, 25))  # no step lost or repeated in the metrics either
    assert [r["loss"] for r in metrics(tmp_path / "cut") if "loss" in r] == \
        [r["loss"] for r in metrics(tmp_path / "ref") if "loss" in r]


def test_two_processes_match_one_process_loss_curve(tmp_path):
    pytest.importorskip("torch.distributed")
    base = {"train.steps": 8, "train.batch_size": 4, "data.n_train": 128, "eval.n": 2}
    one = tiny_overrides(tmp_path / "one", **{**base, "train.grad_accum": 2})
    two = tiny_overrides(tmp_path / "two", **{**base, "train.grad_accum": 1})
    subprocess.run(CLI + ["train", *one], check=True, env=_env(), capture_output=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                "-m", "retort.cli", "train", *two]
    proc = subprocess.run(launcher, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    la = [r["loss"] for r in metrics(tmp_path / "one") if "loss" in r]
    lb = [r["loss"] for r in metrics(tmp_path / "two") if "loss" in r]
    assert len(la) == len(lb) == 8
    assert all(math.isclose(x, y, rel_tol=1e-5) for x, y in zip(la, lb)), (la, lb)
    wa = load_file(tmp_path / "one" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_tensorboard_tracker_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", steps=3) + ["train.log_with=tensorboard"])
    train(run)
    assert list((tmp_path / "r").rglob("events.out.tfevents.*"))

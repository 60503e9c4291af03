"""A method's own state and the modules it owns survive kill -9: resume is bitwise equal to an
uninterrupted run (curio_sft's EMA reference; a test method with a critic on its own optimizer)."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import kill_while_training, tiny_overrides
from retort.config import load_config
from retort.lm.config import TrainRun
from retort.lm.methods import METHODS, LossOut, Owned
from retort.lm.methods.base import token_nll_sum
from retort.lm.methods.sft import SFT
from retort.train import train

HERE = Path(__file__)


class CriticSFT(SFT):
    """sft plus a linear critic on the student's last hidden states, trained by its own SGD toward
    the token's log-prob (so both gradients matter), and a step counter as extra state."""

    name = "test_critic"

    @dataclass
    class Config:
        critic_weight: float = 0.5

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self.calls = 0

    def owned(self):
        torch.manual_seed(1234)
        hidden = self.ctx.student().config.hidden_size
        return {"critic": Owned(torch.nn.Linear(hidden, 1), lr=0.05, optimizer="sgd", schedule="constant")}

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]

    def loss(self, model, batch):
        self.calls += 1
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        nll, n = token_nll_sum(model, batch)
        h = out.hidden_states[-1][:, :-1][batch["labels"][:, 1:] != -100]
        critic = self.owned_modules["critic"](h).squeeze(-1)
        target = torch.full_like(critic, float(self.calls % 3))
        loss = nll + self.cfg.critic_weight * ((critic - target) ** 2).sum()
        return LossOut(loss, n, {"calls": float(self.calls)})


def register():
    METHODS["test_critic"] = CriticSFT


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent / "src"), str(HERE.parent), env.get("PYTHONPATH", "")])
    return env


def _cli(*args):
    code = (f"import runpy, sys; runpy.run_path({str(HERE)!r})['register'](); "
            "from retort.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, *args]


@pytest.mark.parametrize("method, extra", [
    ("curio_sft", {"method_args.sync_every": 2, "method_args.mixup": 0.5, "method_args.top_k": 16}),
    # the owned critic also resumes exactly in test_diffuse and test_hidden_kd (default tier)
    pytest.param("test_critic", {}, marks=pytest.mark.slow),
])
def test_kill_then_resume_is_bitwise_equal_with_method_state(tmp_path, method, extra):
    common = tiny_overrides("X", steps=18, **{"method": method, "train.save_every": 3, "data.n_train": 200,
                                              "eval.n": 2, **extra})
    ref = [a if not a.startswith("out=") else f"out={tmp_path / 'ref'}" for a in common]
    cut = [a if not a.startswith("out=") else f"out={tmp_path / 'cut'}" for a in common]
    subprocess.run(_cli("train", *ref), check=True, env=_env(), capture_output=True)
    kills = kill_while_training(_cli("train", "--resume", *cut), _env(), tmp_path / "cut", ("step-0000006", "step-0000012"))
    assert kills >= 1
    subprocess.run(_cli("train", "--resume", *cut), check=True, env=_env(), capture_output=True)
    files = ["model/model.safetensors"]
    if method == "test_critic":
        files.append("ckpt/step-0000018/method/critic.safetensors")
    else:
        files.append("ckpt/step-0000018/method/state.safetensors")  # the EMA reference itself
    for f in files:
        a, b = load_file(tmp_path / "ref" / f), load_file(tmp_path / "cut" / f)
        assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a), f


def test_owned_module_trains_with_its_own_optimizer_and_schedule(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "test_critic", CriticSFT)
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", steps=4, **{
        "method": "test_critic", "train.save_every": 2}))
    torch.manual_seed(1234)
    first = torch.nn.Linear(16, 1).state_dict()
    train(run)
    saved = load_file(tmp_path / "r" / "ckpt" / "step-0000004" / "method" / "critic.safetensors")
    assert not torch.equal(saved["weight"], first["weight"])  # it trained
    sched = torch.load(tmp_path / "r" / "ckpt" / "step-0000004" / "method" / "critic.scheduler.pt", weights_only=True)
    # accelerate's state: the student's optimizer first, then the critic's
    opt = torch.load(tmp_path / "r" / "ckpt" / "step-0000004" / "accelerate" / "optimizer_1.bin", weights_only=True)
    assert set(sched["_last_lr"]) == {0.05}  # constant, while the student's warms up and decays
    assert "momentum_buffer" in next(iter(opt["state"].values()))  # SGD, not the student's AdamW


def test_sgd_is_chosen_by_config(tmp_path):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", steps=2, **{
        "train.optimizer": "sgd", "train.momentum": 0.8, "train.nesterov": True, "train.save_every": 2}))
    train(run)
    opt = torch.load(tmp_path / "r" / "ckpt" / "step-0000002" / "accelerate" / "optimizer.bin", weights_only=True)
    assert opt["param_groups"][0]["momentum"] == 0.8 and opt["param_groups"][0]["nesterov"] is True


def test_a_checkpoint_of_the_earlier_format_still_resumes_bitwise(tmp_path, monkeypatch):
    """Checkpoints written before accelerate's state saving (optimizer.pt, rng-RANK.json) resume."""
    import json

    from accelerate.utils import load as accelerate_load

    import retort.train.loop as loop

    ref = tiny_overrides(tmp_path / "ref", steps=6, **{"train.save_every": 3})
    train(load_config(TrainRun, None, ref))
    cut = tiny_overrides(tmp_path / "cut", steps=6, **{"train.save_every": 3})
    real = loop.save_checkpoint

    class Killed(BaseException):
        pass

    def save_then_die(run_dir, step, **kw):
        real(run_dir, step, **kw)
        raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(load_config(TrainRun, None, cut))
    monkeypatch.setattr(loop, "save_checkpoint", real)
    ckpt = tmp_path / "cut" / "ckpt" / "step-0000003"
    states = accelerate_load(ckpt / "accelerate" / "random_states_0.pkl")
    py, npy = states["random_state"], states["numpy_random_seed"]
    (ckpt / "rng-0.json").write_text(json.dumps({
        "python": [py[0], list(py[1]), py[2]], "numpy": [npy[0], npy[1].tolist(), *npy[2:]],
        "torch": states["torch_manual_seed"].tolist()}))
    torch.save(accelerate_load(ckpt / "accelerate" / "optimizer.bin"), ckpt / "optimizer.pt")
    for f in (ckpt / "accelerate").iterdir():
        f.unlink()
    (ckpt / "accelerate").rmdir()
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "files"}))
    train(load_config(TrainRun, None, cut), resume=True)
    a, b = load_file(tmp_path / "ref" / "model" / "model.safetensors"), load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

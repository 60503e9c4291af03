"""A fourth track, defined only here (a toy regression task, one method), registered with
`retort.track.register`, gets every core command through the CLI — train, eval, teacher, demo,
report, methods, config — with no change outside this file: proof that the track contract is the
whole interface between the core and a track."""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from typing import Any, Dict, Optional

import pytest
import torch

from retort.cli import main
from retort.config import OptimConfig, load_config, param, section
from retort.contract import LossOut, Method
from retort.report import ReportParts
from retort.report.html import esc, table
from retort.track import TRACKS, Track, TrackEntry, register


# ---------------------------------------------------------------------------- the track's package
@dataclass
class ToyTask:
    slope: float = param(3.0, "y = slope * x + 1")


@dataclass
class ToyModel:
    name: str = param("linear", "linear, or a saved model directory")


@dataclass
class ToyRun:
    out: str = param("runs/toy", "run directory")
    seed: int = param(0, "seed")
    method: str = param("mse", "method")
    method_args: Dict[str, Any] = param({}, "the method's options")
    task: ToyTask = section(ToyTask, "the task")
    student: ToyModel = section(ToyModel, "the student")
    teacher: ToyModel = section(ToyModel, "the teacher", name="builtin:teacher")
    train: OptimConfig = section(OptimConfig, "optimisation", steps=150, batch_size=32, lr=0.2, warmup_steps=0,
                                 save_every=0)
    track: str = param("toy", "track", choices=["toy"])
    threads: int = param(0, "threads", lo=0)


@dataclass
class ToyEvalRun:
    out: Optional[str] = param(None, "results JSON")
    task: ToyTask = section(ToyTask, "the task")
    model: ToyModel = section(ToyModel, "the model")
    track: str = param("toy", "track", choices=["toy"])
    threads: int = param(0, "threads", lo=0)


def _data(slope, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 2 - 1
    return x, slope * x + 1


def _load(path):
    from safetensors.torch import load_file

    model = torch.nn.Linear(1, 1)
    model.load_state_dict(load_file(f"{path}/model.safetensors"))
    return model


class MSE(Method):
    name, paper, equation = "mse", "least squares (Gauss 1809)", "L = sum (f(x) - y)^2"

    @dataclass
    class Config:
        scale: float = param(1.0, "loss weight", lo=0.0)

    def batches(self, plan):
        step = plan.start_step
        while True:
            x, y = _data(self.ctx.slope, plan.batch_size, plan.seed * 7919 + step)
            yield {"x": x, "y": y}
            step += 1

    def count(self, batch):
        return len(batch["x"])

    def loss(self, model, batch):
        return LossOut(self.cfg.scale * ((model(batch["x"]) - batch["y"]) ** 2).sum(), len(batch["x"]))


class ToyTrack(Track):
    name, methods, run_config, eval_config, demo_out = "toy", {"mse": MSE}, ToyRun, ToyEvalRun, "runs/demo-toy"

    def get_task(self, cfg):
        return cfg

    def load_student(self, run, ckpt, seed):
        torch.manual_seed(seed)
        return (_load(ckpt / "model") if ckpt else torch.nn.Linear(1, 1)), None

    def context(self, run, task, processor, device, say):
        return types.SimpleNamespace(slope=task.slope)

    def save_checkpoint_model(self, model, processor, path, state_dict=None):
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))

    export = save_checkpoint_model

    def train_evaluator(self, run):
        return lambda model, processor, task: {"mse": _mse(model, task.slope)}

    def evaluate(self, run, targets, options, console):
        rows = {label: {"mse": _mse(_load(name), run.task.slope), "n": 256} for label, name in targets}
        console.print(json.dumps(rows))
        return rows

    def teacher_config(self, config_file=None, overrides=None):
        return load_config(ToyRun, config_file, overrides, base={"out": str(self.cache), "train": {"steps": 200}})

    def ensure_teacher(self, config_file=None, overrides=None, *, force=False, console=None):
        from retort.api import train

        run = self.teacher_config(config_file, overrides)
        if force or not (self.cache / "model").is_dir():
            train(run, resume=True)
        return self.cache / "model"

    def demo(self, out, console=None, methods=None, seed=0):
        from retort.api import evaluate, report, train

        teacher = self.ensure_teacher()
        train(track="toy", out=f"{out}/mse", seed=seed, train={"steps": 40})
        results = evaluate([f"teacher={teacher}", f"mse={out}/mse/model"], track="toy", json_out=f"{out}/results.json")
        report([out])
        return results


@torch.no_grad()
def _mse(model, slope):
    x, y = _data(slope, 256, 12345)
    return float(((model(x) - y) ** 2).mean())


REPORT = types.SimpleNamespace(
    claims=lambda result: "mse" in result,
    sections=lambda rows, runs: ReportParts(comparison=[table(["model", "MSE"], [
        [(esc(r.name), False), (esc(f"{r.eval.get('mse', float('nan')):.4f}"), True)] for r in rows])]))


# ---------------------------------------------------------------------------- the tests
@pytest.fixture
def toy(tmp_path):
    track = ToyTrack()
    track.cache = tmp_path / "cache" / "teacher-toy"
    register("toy", TrackEntry(track, "a toy regression", report=REPORT))
    yield track
    del TRACKS["toy"]


def test_a_track_defined_outside_retort_gets_every_command(toy, tmp_path, capsys):
    assert main(["methods", "--track", "toy"]) == 0
    assert "mse: least squares" in capsys.readouterr().out
    assert main(["config", "train", "--track", "toy"]) == 0
    assert "task.slope = 3.0" in capsys.readouterr().out
    assert main(["config", "teacher", "--track", "toy"]) == 0
    assert "train.steps = 200" in capsys.readouterr().out

    assert main(["teacher", "track=toy"]) == 0
    assert (toy.cache / "model" / "model.safetensors").is_file()
    run = tmp_path / "run"
    assert main(["train", "track=toy", f"out={run}", "method_args.scale=2.0"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 150 and summary["eval"]["mse"] < 0.05  # it learned y = 3x + 1

    res = tmp_path / "eval.json"
    assert main(["eval", "track=toy", "-m", f"student={run / 'model'}", "-m", f"teacher={toy.cache / 'model'}",
                 "--json", str(res)]) == 0
    rows = json.loads(res.read_text())
    assert set(rows) == {"student", "teacher"} and rows["teacher"]["mse"] < 1e-3
    assert main(["eval", "track=toy", "-m", f"s={run / 'model'}", "--hybrid", "1"]) == 2  # another track's option

    assert main(["report", str(run), str(res), "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "MSE" in page and "student" in page

    demo = tmp_path / "demo"
    assert main(["demo", "--track", "toy", "--out", str(demo)]) == 0
    assert set(json.loads((demo / "results.json").read_text())) == {"teacher", "mse"}
    assert (demo / "report.html").is_file()


def test_an_unknown_method_of_the_new_track_is_refused_with_its_methods(toy, tmp_path, capsys):
    assert main(["train", "track=toy", f"out={tmp_path / 'r'}", "method=nope"]) == 2
    assert "method='nope': unknown; methods: mse" in capsys.readouterr().err

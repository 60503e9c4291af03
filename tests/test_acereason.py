"""AceReason's recipe: the plateau rule of the response-length curriculum on scripted reward and
length sequences, the temperature probe on a real tiny student, both inside grpo (stages advance,
a resumed run continues them exactly), and one tiny stage of the shipped chain (configs/acereason)."""

import json
from pathlib import Path

import pytest
from conftest import tiny_overrides

from retort.cli import main
from retort.config import load_config
from retort.errors import ConfigError
from retort.lm.config import ModelConfig, TrainRun
from retort.lm.methods import METHODS
from retort.lm.methods.base import MethodContext
from retort.lm.methods.curriculum import LengthCurriculum, nearest_temperature
from retort.lm.models import load_model
from retort.lm.tasks import get_task
from retort.lm.tasks.base import Task
from retort.train import train

CHAIN = sorted((Path(__file__).parent.parent / "configs" / "acereason").glob("*.yaml"))


def test_a_stage_ends_when_reward_and_length_stop_rising():
    cur = LengthCurriculum([8, 16, 24], plateau_steps=2, tol=0.01)
    # reward rising: no plateau, however many steps
    for i in range(6):
        assert not cur.observe(0.1 * i, 8)
    assert (cur.stage, cur.cap) == (0, 8)
    # reward flat but length still growing (normalised by the cap, 8): no plateau either
    cur = LengthCurriculum([8, 16, 24], plateau_steps=2, tol=0.01)
    assert [cur.observe(0.5, n) for n in (2, 3, 4, 5)] == [False] * 4
    # both flat: the stage advances once the last W steps gain nothing on the W before
    assert [cur.observe(0.5, 5) for _ in range(3)] == [False, False, True]
    assert (cur.stage, cur.cap, cur.history) == (1, 16, [])
    assert [cur.observe(0.5, 16) for _ in range(4)] == [False, False, False, True]
    assert cur.cap == 24
    assert not any(cur.observe(0.5, 24) for _ in range(8))  # the last stage stays
    # a fall counts as a plateau (no gain); a gain of exactly tol too
    cur = LengthCurriculum([8, 16], plateau_steps=1, tol=0.01)
    assert [cur.observe(r, 8) for r in (0.5, 0.4)] == [False, True]
    cur2 = LengthCurriculum([8, 16], plateau_steps=1, tol=0.25)
    assert [cur2.observe(r, 8) for r in (0.5, 0.75)] == [False, True]
    state = cur.state_dict()
    again = LengthCurriculum([8, 16], plateau_steps=1, tol=0.01)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert (again.stage, again.history) == (cur.stage, cur.history)


def test_the_temperature_nearest_the_target_entropy_is_picked():
    ents = {0.6: 0.12, 0.8: 0.25, 1.0: 0.41, 1.2: 0.7}
    assert nearest_temperature(ents, 0.3) == 0.8
    assert nearest_temperature(ents, 0.35) == 1.0
    assert nearest_temperature({0.5: 0.25, 1.0: 0.75}, 0.5) == 0.5  # a tie: the lower temperature
    with pytest.raises(ValueError):
        nearest_temperature({}, 0.3)


def _grpo(tmp_path, **cfg):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", method="grpo"))
    student, tok = load_model(ModelConfig(name="preset:nano"), seed=5)
    said = []
    ctx = MethodContext(run=run, task=get_task(run.task), tokenizer=tok, student=lambda: student, log=said.append)
    cls = METHODS["grpo"]
    method = cls(ctx, cls.Config(**{"num_generations": 4, **cfg}))
    method.bind(lambda: student)
    return method, said


def test_the_probe_samples_the_student_at_each_temperature_and_keeps_the_nearest(tmp_path):
    method, said = _grpo(tmp_path, target_entropy=1e-6, probe_temperatures=[0.25, 1.0, 4.0], probe_prompts=3,
                         max_new_tokens=6)
    low = method.probe_temperature(seed=0)
    assert low == 0.25 and method.cfg.temperature == 0.25
    line = said[-1]
    ents = [float(x.split(": ")[1]) for x in line.split("probed ")[1].rstrip(")").split(", ")]
    assert ents == sorted(ents) and ents[0] < ents[-1]  # a real student: hotter sampling, higher entropy
    method, said = _grpo(tmp_path, target_entropy=100.0, probe_temperatures=[0.25, 1.0, 4.0], probe_prompts=3,
                         max_new_tokens=6)
    assert method.probe_temperature(seed=0) == 4.0
    method, _ = _grpo(tmp_path, target_entropy=ents[1], probe_temperatures=[0.25, 1.0, 4.0], probe_prompts=3,
                      max_new_tokens=6)
    assert method.probe_temperature(seed=0) == 1.0  # the same probe again: the middle one's own entropy
    with pytest.raises(ConfigError, match="length_stages"):
        _grpo(tmp_path, length_stages=[16, 8])
    staged, _ = _grpo(tmp_path, length_stages=[8, 16])
    with pytest.raises(ConfigError, match="past method_args.length_stages"):  # resumed with fewer stages
        staged.load_state_dict({"curriculum": {"stage": 2, "history": []}})
    with pytest.raises(ConfigError, match="probe_temperatures"):
        _grpo(tmp_path, target_entropy=0.3, probe_temperatures=[])


def _flat(self, text, reference, question=None):
    return 0.5


def _run(tmp_path, name, **extra):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / name, steps=6, **{
        "method": "grpo", "seed": 1, "train.lr": 0.05, "train.batch_size": 8, "train.warmup_steps": 0,
        "method_args.num_generations": 4, "method_args.length_stages": "[4,6,8]", "method_args.plateau_steps": 2,
        "method_args.target_entropy": 0.3, "method_args.probe_temperatures": "[0.5,1.0,2.0]",
        "method_args.probe_prompts": 2, "method_args.mask_truncated_completions": False, **extra}))
    return run


def _rows(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_grpo_advances_its_length_stages_on_a_plateau_and_resumes_them_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(Task, "reward", _flat)  # a flat reward, and completions at the cap: a plateau
    train(_run(tmp_path, "ref"))
    ref = _rows(tmp_path / "ref")
    # the stage advances once, 4 -> 6 tokens, after a plateau of a few steps (which step depends on the
    # sampled lengths), and the killed run below resumes it exactly
    lens, stages = [r["max_new_tokens"] for r in ref], [r["length_stage"] for r in ref]
    assert lens[:4] == [4, 4, 4, 4] and lens[-1] == 6 and lens == sorted(lens)
    assert stages == [0 if n == 4 else 1 for n in lens]
    assert all(r["temperature"] in (0.5, 1.0, 2.0) and "probe_entropy" in r for r in ref)
    cls = METHODS["grpo"]
    real = cls.on_step

    def dies(self, step):
        if step == 6:
            raise KeyboardInterrupt("killed")
        real(self, step)

    monkeypatch.setattr(cls, "on_step", dies)
    with pytest.raises(KeyboardInterrupt):
        train(_run(tmp_path, "cut", **{"train.save_every": 5}))
    monkeypatch.setattr(cls, "on_step", real)
    state = json.loads((tmp_path / "cut" / "ckpt" / "step-0000005" / "method" / "state.json").read_text())
    assert state["curriculum"]["stage"] == 1 and "probe" in state
    train(_run(tmp_path, "cut", **{"train.save_every": 5}), resume=True)
    cut = _rows(tmp_path / "cut")
    assert [(r["loss"], r["max_new_tokens"], r["temperature"]) for r in cut] == \
        [(r["loss"], r["max_new_tokens"], r["temperature"]) for r in ref]


def test_the_shipped_chain_is_math_then_a_second_family_and_one_tiny_stage_runs(tmp_path):
    assert [p.name for p in CHAIN] == ["1_math.yaml", "2_vars.yaml"]
    first, second = (load_config(TrainRun, str(p)) for p in CHAIN)
    assert (first.task.name, second.task.name) == ("modchain", "vars")
    assert second.student.name == f"{first.out}/model"  # stage 2 continues from stage 1's student
    assert first.method == second.method == "grpo"
    out = tmp_path / "stage"
    args = ["train", "-c", str(CHAIN[0]), *tiny_overrides(out, steps=2, **{
        "train.batch_size": 8, "method_args.num_generations": 4, "method_args.length_stages": "[8,12]",
        "method_args.probe_prompts": 2, "data.n_train": 16})]
    assert main(args) == 0
    rows = _rows(out)
    assert len(rows) == 2 and all(r["max_new_tokens"] == 8 and r["temperature"] in (0.6, 0.8, 1.0, 1.2) for r in rows)


def test_retort_methods_shows_the_new_options_with_their_defaults(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for line in ("method_args.length_stages = []", "method_args.probe_temperatures = [0.6, 0.8, 1.0, 1.2]",
                 "method_args.reward = 'verifier'", "method_args.target_entropy = 0.0"):
        assert line in out
    assert "MISSING" not in out

"""The demo's plan: which runs, in which order, each a valid training configuration."""

import pytest

from retort.config import load_config

from retort.lm.config import ModelConfig, TrainRun
from retort.lm.demo import CURATED, DEMO_RUNS, STUDENT, TRACE_SETS, WARM, _placeholders, _plan


def test_plan_trains_dependencies_first():
    assert _plan(["answers", "sft"]) == ["answers", "sft"]
    assert _plan(["gkd", "sft_more"]) == ["warm", "gkd", "sft_more"]
    assert _plan(["dasd_sched"]) == ["warm", "dasd_low_half", "dasd_sched"]
    assert _plan(["dasd_das"]) == ["warm", "dasd_das"]  # DAS scores with the warm start
    assert _plan(["redi"]) == ["warm", "redi"]


@pytest.mark.parametrize("name", [*DEMO_RUNS, "warm"])
def test_every_demo_row_is_a_valid_training_run(name, tmp_path):
    overrides = WARM[1] if name == "warm" else DEMO_RUNS[name][1]
    for ph in _placeholders(overrides):
        assert ph in TRACE_SETS or ph in CURATED or ph == "warm" or ph.split(":", 1)[1] in DEMO_RUNS, ph
    args = [o.replace("{", "").replace("}", "") for o in overrides]  # any path will do here
    run = load_config(TrainRun, None, [*args, f"out={tmp_path / name}"], base=STUDENT)
    assert run.method == next(o.split("=", 1)[1] for o in overrides if o.startswith("method="))


def test_demo_evaluation_is_reused_until_the_weights_change(tmp_path, monkeypatch):
    import retort.lm.eval as ev
    from retort.lm.config import ModelConfig, TaskConfig
    from retort.lm.demo import _evaluated
    from retort.lm.models import load_model, save_model
    from retort.lm.tasks import get_task

    model, tok = load_model(ModelConfig(name="preset:nano"))
    save_model(model, tok, tmp_path / "m")
    calls = []
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: calls.append(1) or {"accuracy": 0.5})
    task = get_task(TaskConfig())
    first = _evaluated(tmp_path / "m", tmp_path / "eval.json", task)
    assert _evaluated(tmp_path / "m", tmp_path / "eval.json", task) == first and len(calls) == 1
    save_model(model, tok, tmp_path / "m")  # rewritten weights: evaluated again
    _evaluated(tmp_path / "m", tmp_path / "eval.json", task)
    assert len(calls) == 2


def test_a_finished_row_trained_with_other_settings_is_refused(tmp_path):
    from retort.config import save_config
    from retort.lm.demo import _check_same_run
    from retort.errors import ConfigError

    run = load_config(TrainRun, None, ["method=sft", f"out={tmp_path / 'row'}"], base=STUDENT)
    _check_same_run(run)  # nothing there yet
    (tmp_path / "row").mkdir()
    save_config(run, tmp_path / "row" / "config.yaml")
    _check_same_run(run)  # the same settings: reused
    other = load_config(TrainRun, None, ["method=sft", "train.lr=1e-4", f"out={tmp_path / 'row'}"], base=STUDENT)
    with pytest.raises(ConfigError, match="train.lr"):
        _check_same_run(other)


def test_a_curated_set_remembers_the_student_that_made_it(tmp_path):
    from retort.lm.demo import _made_with
    from retort.lm.models import load_model, save_model
    from retort.lm.traces import weights_sha256

    a, tok = load_model(ModelConfig(name="preset:nano"), seed=1)
    save_model(a, tok, tmp_path / "warm")
    das = {"params": {"filters": {"das": {"student_weights_sha256": weights_sha256(a)}}}}
    mixed = {"params": {"mixed_policy": {"student_weights_sha256": weights_sha256(a)}}}
    assert _made_with(das, tmp_path / "warm") and _made_with(mixed, tmp_path / "warm")
    b, _ = load_model(ModelConfig(name="preset:nano"), seed=2)
    save_model(b, tok, tmp_path / "warm")  # the warm start was trained again
    assert not _made_with(das, tmp_path / "warm") and not _made_with({"params": {}}, tmp_path / "warm")

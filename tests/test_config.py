import pytest
import yaml

from retort.config import describe, load_config, save_config

from retort.lm.config import EvalRun, TrainRun
from retort.errors import ConfigError


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.002\n  steps: 7\nmethod_args: {}\n")
    run = load_config(TrainRun, str(f), ["train.lr=5e-4", "task.difficulty.steps_max=4"])
    assert run.train.lr == 5e-4 and run.train.steps == 7 and run.train.batch_size == 32
    assert run.task.difficulty == {"steps_max": 4}


def test_unknown_key_names_the_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(TrainRun, None, ["train.lrr=1"])
    msg = str(e.value)
    assert "train.lrr" in msg and "lr" in msg and "warmup_steps" in msg
    f = tmp_path / "c.yaml"
    f.write_text("trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'trian'.*valid keys: out, seed, method"):
        load_config(TrainRun, str(f))


def test_bad_value_names_field_and_range():
    with pytest.raises(ConfigError, match=r"train.lr=-3.0 is out of range; expected 0.0 < lr <= 1.0"):
        load_config(TrainRun, None, ["train.lr=-3"])
    with pytest.raises(ConfigError, match=r"train.lr"):
        load_config(TrainRun, None, ["train.lr=abc"])
    with pytest.raises(ConfigError, match=r"train.precision='fp8' is not allowed; expected one of: auto, fp32, bf16"):
        load_config(TrainRun, None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match=r"must look like key=value"):
        load_config(TrainRun, None, ["train.lr"])


def test_bad_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: 1\n   steps: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(TrainRun, str(f))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(TrainRun, str(tmp_path / "missing.yaml"))


def test_cross_field_check():
    with pytest.raises(ConfigError, match="data.traces"):
        load_config(TrainRun, None, ["data.source=traces"])


def test_resolved_config_round_trips(tmp_path):
    run = load_config(TrainRun, None, ["train.lr=0.01", "seed=3"])
    save_config(run, tmp_path / "config.yaml")
    again = load_config(TrainRun, str(tmp_path / "config.yaml"))
    assert again == run
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["lr"] == 0.01


def test_every_field_is_documented():
    for cls in (TrainRun, EvalRun):
        for key, _default, doc in describe(cls):
            assert doc.strip(), key


@pytest.mark.parametrize("arg, named", [
    ("method_args.gate=maybe", "method_args.gate='maybe': Value 'maybe' is not a valid bool"),
    ("method_args.beta=abc", "method_args.beta='abc'"),
    ("method_args.max_new_tokens=10.5", "method_args.max_new_tokens=10.5"),
    ("method_args.top_k=3", "unknown key 'method_args.top_k'"),
])
def test_method_args_are_typed_from_the_methods_config(tmp_path, capsys, arg, named):
    from retort.cli import main

    rc = main(["train", "method=gkd", arg, "student.name=preset:nano", f"out={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and named in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()

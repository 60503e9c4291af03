"""benchmarks/onpolicy.py --real (benchmarks/_onpolicy_real.py) without running it: every arm's
`retort train` overrides load against the config schema, the TRL config names only fields TRL has,
the summary's mean +- se and ratios, and the argument checks."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def real(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("_onpolicy_real", None)
    return importlib.import_module("_onpolicy_real")


def _args(pair):
    return Namespace(real=pair, steps=40, batch=32, max_new_tokens=96, n_prompts=4000, lr=5e-4, threads=2,
                     temperature=1.0, beta=0.5)  # the built-in benchmark's defaults, as argparse leaves them


@pytest.mark.parametrize("pair", ["smollm2", "qwen-smollm2"])
def test_every_arm_is_a_valid_retort_run_and_trl_config(real, pair):
    from retort.config import load_config
    from retort.lm.config import TrainRun
    from retort.lm.methods import METHODS

    a = _args(pair)
    real.defaults(a)
    assert (a.steps, a.batch, a.max_new_tokens) == (10, 4, 128)
    fields = {f.name for f in dataclasses.fields(METHODS["gkd"].Config)}
    for arm in real.ARMS:
        ov = real.retort_overrides(a, 3, "STUDENT", "TEACHER", "OUT", arm)
        method_args = [o for o in ov if o.startswith("method_args.")]
        run = load_config(TrainRun, None, [o for o in ov if o not in method_args])
        assert run.method == "gkd" and run.seed == 3 and run.train.batch_size == 4 and run.task.name == "rg:basic_arithmetic"
        args = dict(o.removeprefix("method_args.").split("=", 1) for o in method_args)
        assert set(args) <= fields
        METHODS["gkd"].Config(**{k: (float(v) if k in ("lmbda", "temperature", "top_p", "beta") else
                                     int(v) if k == "max_new_tokens" else v) for k, v in args.items()})
        assert (args.get("cross_tokenizer") == "hybrid") == (pair == "qwen-smollm2")
        assert (run.teacher.dtype == "bfloat16") == (arm == "retort-bf16" and pair == "smollm2")
        assert (args.get("rollout_dtype") == "bfloat16") == (arm == "retort-bf16")
    trl = pytest.importorskip("trl")
    kw = real.trl_config_kwargs(a, 3, "OUT", "TEACHER")
    if pair == "qwen-smollm2":
        from trl.experimental.gold import GOLDConfig as cfg
    else:
        cfg = trl.DistillationConfig
    assert set(kw) <= {f.name for f in dataclasses.fields(cfg)}


def test_summary_means_standard_errors_ratios_and_loss_check(real):
    def side(rate, peak_mib, losses):
        return {"steps_per_s": rate, "peak_above_start_bytes": peak_mib * 2**20, "peak_rss_bytes": 2 * peak_mib * 2**20,
                "loss": losses, "completion_tokens_mean": 128.0}

    reps = [{"retort": side(2.0, 500, [9.0, 1.0, 1.0]), "trl": side(1.0, 1000, [9.0, 1.1, 1.1])},
            {"retort": side(4.0, 500, [9.0, 1.2, 1.2]), "trl": side(1.0, 1000, [9.0, 1.1, 1.1])}]
    s = real.summarise(reps)
    assert s["retort"]["steps_per_s"] == {"n": 2, "mean": 3.0, "se": pytest.approx(1.0)}
    assert s["retort"]["loss_mean_timed"]["mean"] == pytest.approx(1.1)  # the first (untimed) step left out
    r = s["ratios_retort"]
    assert r["steps_per_s_over_trl"] == 3.0 and r["steps_per_s_ratio_per_rep"] == [2.0, 4.0]
    assert r["peak_above_start_over_trl"] == 0.5
    assert s["loss_check_retort"]["within"] and "ratios_retort-bf16" not in s


def test_the_bf16_arm_needs_real_mode(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("onpolicy", None)
    onpolicy = importlib.import_module("onpolicy")
    monkeypatch.setattr(sys, "argv", ["onpolicy.py", "--sides", "retort-bf16"])
    with pytest.raises(SystemExit, match="arm of --real"):
        onpolicy.main()


def test_the_arms_alternate_and_a_failed_arm_is_recorded(real, tmp_path):
    calls = []

    def child(kind, spec, threads, log):  # a stand-in for a measured run: records the order
        calls.append(kind)
        if kind == "real-prepare":
            return {"teacher": {}, "student": {}}
        if kind == "real-trl" and spec["seed"] == 1:
            raise SystemExit("trl child failed (status 1)")
        rate = {"real-retort": 2.0, "real-retort-bf16": 3.0, "real-trl": 1.0}[kind]
        return {"steps": 3, "steps_per_s": rate, "peak_above_start_bytes": 2**30, "peak_rss_bytes": 2**31,
                "loss": [1.0, 0.9, 0.8], "completion_tokens_mean": 128.0}

    a = _args("smollm2")
    a.__dict__.update(work=str(tmp_path), out=str(tmp_path / "r.json"), out_given=True, reps=3, seed=0,
                      sides=["retort", "trl"], child=None)
    real.run(a, child)
    order = [k.removeprefix("real-") for k in calls[1:]]
    assert order == ["retort", "retort-bf16", "trl", "trl", "retort-bf16", "retort", "retort", "retort-bf16", "trl"]
    import json

    res = json.loads((tmp_path / "r.json").read_text())
    assert res["complete"] and [r["seed"] for r in res["reps"]] == [0, 1, 2]
    assert res["reps"][1]["trl"]["error"].startswith("trl child failed")
    assert res["summary"]["trl"]["steps_per_s"]["n"] == 2  # the failed repetition left out of TRL's mean
    assert res["summary"]["ratios_retort-bf16"]["steps_per_s_over_trl"] == 3.0

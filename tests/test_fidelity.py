"""Fidelity to a reference model (`retort eval --fidelity-to`): answer agreement, top-1 agreement
and per-token KL on the reference's greedy answers, checked against known answers and a direct
computation."""

import json

import pytest
import torch

from retort.cli import main
from retort.lm.config import EvalConfig, ModelConfig, TaskConfig
from retort.lm.data.collate import encode_prompt
from retort.lm.eval import fidelity, teacher_answers
from retort.lm.models import load_model
from retort.lm.rollout.generate import Completion
from retort.lm.tasks import get_task


def _setup(n=6):
    task = get_task(TaskConfig())
    cfg = EvalConfig(n=n, max_new_tokens=8, batch_size=4)
    a, tok = load_model(ModelConfig(name="preset:nano"), seed=0)
    b, _ = load_model(ModelConfig(name="preset:nano"), seed=1)
    return task, cfg, a.eval(), b.eval(), tok


def test_a_model_agrees_with_itself_and_the_kl_is_a_direct_computation():
    task, cfg, a, b, tok = _setup()
    ref = teacher_answers(a, tok, task, cfg)
    same = fidelity(a, tok, a, tok, ref, task, cfg, ref)
    assert same["agree_top1"] == 1.0 and same["kl_ref_model"] == pytest.approx(0.0, abs=1e-6)
    other = fidelity(b, tok, a, tok, ref, task, cfg, ref)
    # by hand: KL(a || b) over a's greedy answer tokens (and EOS where it stopped), all prompts
    prompts = [e.prompt for e in task.examples(cfg.split, cfg.n, cfg.seed)]
    kls, top1 = [], []
    for p, g in zip(prompts, ref):
        ids = encode_prompt(tok, p)
        c = g.token_ids + ([tok.eos_token_id] if g.finish_reason == "stop" else [])
        x = torch.tensor([ids + c])
        with torch.no_grad():
            la = torch.log_softmax(a(x).logits[0, len(ids) - 1:len(ids) - 1 + len(c)].double(), -1)
            lb = torch.log_softmax(b(x).logits[0, len(ids) - 1:len(ids) - 1 + len(c)].double(), -1)
        kls += (la.exp() * (la - lb)).sum(-1).tolist()
        top1 += (la.argmax(-1) == lb.argmax(-1)).tolist()
    assert other["kl_ref_model"] == pytest.approx(sum(kls) / len(kls), rel=1e-4)
    assert other["agree_top1"] == pytest.approx(sum(top1) / len(top1))
    assert other["kl_ref_model"] > 1e-4  # two random inits: near-uniform, but not the same


def test_answer_agreement_counts_the_same_extracted_answer_only():
    task, cfg, a, _, tok = _setup(n=4)
    mk = [Completion(t, [], "stop") for t in ("A:1", "A:2", "no answer", "x\nA:3")]
    ref = [Completion(t, [], "stop") for t in ("A:1", "A:5", "no answer", "A:3")]
    got = fidelity(a, tok, a, tok, ref, task, cfg, mk)
    assert got["agree_answer"] == 0.5  # 1 and 3 agree; 2 vs 5 differ; no answer is no agreement


def test_eval_cli_reports_fidelity_to_a_labelled_model(tmp_path, capsys):
    d = tmp_path / "other"
    m, tok = load_model(ModelConfig(name="preset:nano"), seed=5)
    m.save_pretrained(d)
    tok.save_pretrained(d)
    out = tmp_path / "e.json"
    rc = main(["eval", "-m", "ref=preset:nano", "-m", f"other={d}", "--fidelity-to", "ref", "--json", str(out),
               "eval.n=4", "eval.max_new_tokens=6"])
    assert rc in (0, None)
    res = json.loads(out.read_text())
    assert "agree_top1" not in res["ref"]  # the reference is not compared with itself
    assert res["other"]["fidelity_to"] == "ref" and 0 <= res["other"]["agree_top1"] <= 1
    assert res["other"]["kl_ref_model"] > 0
    assert "agree_answer" in capsys.readouterr().err  # the table (the console writes to stderr)


def test_training_runs_with_a_teacher_report_fidelity_to_it(tmp_path):
    from conftest import tiny_overrides

    t = tmp_path / "teacher"
    m, tok = load_model(ModelConfig(name="preset:nano"), seed=7)
    m.save_pretrained(t)
    tok.save_pretrained(t)

    def final_eval(name, **extra):
        assert main(["train", *tiny_overrides(tmp_path / name, steps=2, **extra)]) in (0, None)
        return json.loads((tmp_path / name / "summary.json").read_text())["eval"]

    kd = final_eval("kd", method="kd", **{"teacher.name": str(t)})
    assert kd["fidelity_to"] == "teacher" and 0 <= kd["agree_top1"] <= 1 and kd["kl_ref_model"] > 0
    metrics = (tmp_path / "kd" / "metrics.jsonl").read_text()
    assert '"eval/agree_top1"' in metrics and '"eval/kl_ref_model"' in metrics
    # sft on worked solutions has no teacher; eval.fidelity=false turns it off
    assert "agree_top1" not in final_eval("sft", method="sft")
    assert "agree_top1" not in final_eval("kd_off", method="kd", **{"teacher.name": str(t), "eval.fidelity": False})


def test_a_runs_fidelity_evaluation_uses_its_open_teacher_not_a_second_copy(tmp_path, monkeypatch):
    """kd's online teacher and the final evaluation's fidelity reference are one model in memory:
    the teacher's weights are loaded once (issue 29: the second copy was a real run's peak RSS)."""
    from conftest import tiny_overrides

    from retort.lm.models import load

    loaded, real = [], load._load
    monkeypatch.setattr(load, "_load", lambda cfg, **kw: loaded.append(cfg.name) or real(cfg, **kw))
    assert main(["train", *tiny_overrides(tmp_path / "kd", steps=2, method="kd",
                                          **{"teacher.name": "preset:teacher"})]) in (0, None)
    summary = json.loads((tmp_path / "kd" / "summary.json").read_text())["eval"]
    assert summary["fidelity_to"] == "teacher" and summary["kl_ref_model"] > 0
    assert loaded.count("preset:teacher") == 1, loaded


def test_an_open_teacher_is_shared_only_while_held_and_only_for_the_same_model(tmp_path):
    import gc
    import weakref

    from retort.lm.teachers import open_teacher

    a = open_teacher(ModelConfig(name="preset:nano"), seed=0)
    assert open_teacher(ModelConfig(name="preset:nano"), seed=0) is a
    assert open_teacher(ModelConfig(name="preset:nano"), seed=1) is not a  # another preset draw
    assert open_teacher(ModelConfig(name="preset:nano", dtype="bfloat16"), seed=0) is not a
    d = tmp_path / "t"
    m, tok = load_model(ModelConfig(name="preset:nano"), seed=3)
    m.save_pretrained(d)
    tok.save_pretrained(d)
    b = open_teacher(ModelConfig(name=str(d)))
    assert open_teacher(ModelConfig(name=str(d))) is b
    load_model(ModelConfig(name="preset:student"), seed=3)[0].save_pretrained(d)  # another model in its place
    assert open_teacher(ModelConfig(name=str(d))) is not b
    held = weakref.ref(a.model)
    del a
    gc.collect()
    assert held() is None  # nothing holds it: the registry does not keep a teacher alive


def test_the_reference_of_a_run_is_its_traces_teacher_else_its_methods_teacher(tmp_path):
    from retort.config import load_config
    from retort.lm.config import TracesRun, TrainRun
    from retort.lm.track import fidelity_reference
    from retort.lm.traces import run_traces

    tr = tmp_path / "tr"
    run_traces(load_config(TracesRun, None, [f"out={tr}", "teacher.name=preset:nano", "n_prompts=2",
                                             "sampling.n=1", "sampling.max_new_tokens=4"]))

    def ref(*over):
        return fidelity_reference(load_config(TrainRun, None, list(over)))

    assert ref("data.source=traces", f"data.traces={tr}") == "preset:nano"  # sft on its traces
    from retort.lm.curate import filter_traces

    filter_traces(str(tr), str(tmp_path / "f1"), max_tokens=100)
    filter_traces(str(tmp_path / "f1"), str(tmp_path / "f2"), max_tokens=100)
    assert ref("data.source=traces", f"data.traces={tmp_path / 'f2'}") == "preset:nano"  # a filtered set's source's
    assert ref("method=kd", "teacher.name=preset:teacher") == "preset:teacher"
    assert ref("method=sft") is None and ref("method=dpo") is None
    assert ref("method=kd", f"teacher.name=traces:{tr}") is None  # a trace store: no model to compare with
    assert ref("method=kd", "teacher.name=openai:m") is None
    assert ref("method=kd", "eval.fidelity=false") is None


def test_demo_rows_carry_fidelity_to_the_teacher_and_cache_it(tmp_path):
    from retort.lm import demo

    dirs = {}
    for name, seed in (("teacher", 0), ("student", 1)):
        m, tok = load_model(ModelConfig(name="preset:nano"), seed=seed)
        m.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        dirs[name] = tmp_path / name
    task = get_task(TaskConfig())
    ref = demo._reference(dirs["teacher"], task)
    calls = []
    get = ref["get"]
    ref["get"] = lambda: calls.append(1) or get()
    cache = tmp_path / "eval.json"
    first = demo._evaluated(dirs["student"], cache, task, reference=ref)
    assert first["fidelity_to"] == "teacher" and "agree_top1" in first and calls == [1]
    assert demo._evaluated(dirs["student"], cache, task, reference=ref) == first and calls == [1]  # cached
    plain = demo._evaluated(dirs["student"], cache, task)  # another key: evaluated again, no fidelity
    assert "agree_top1" not in plain

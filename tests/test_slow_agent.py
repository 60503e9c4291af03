"""Agent distillation end to end with the built-in teacher (slow: it trains the teacher of the calc
toy to >= 95% test accuracy as an agent, every action run in the sandbox, on the CPU): teacher ->
agent traces -> the paper's filter -> sft -> eval agent=code with SAG; and the packaged chat models'
templates render a conversation for generation exactly as training renders it (slow: they load)."""

import json
import shutil

import pytest

from retort.cli import main
from retort.lm.data.traces import read_manifest, read_traces

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")]


def test_builtin_teacher_acts_and_a_student_learns_to(tmp_path, monkeypatch):
    monkeypatch.setenv("RETORT_CACHE", str(tmp_path / "cache"))
    assert main(["teacher", "task.name=calc"]) == 0  # refused below 95% accuracy (as an agent)
    out = tmp_path / "agent"
    assert main(["traces", "agent=code", "task.name=calc", "teacher.name=builtin:teacher-calc", "n_prompts=300",
                 "sampling.max_new_tokens=64", f"out={out}"]) == 0
    stats = read_manifest(out)["stats"]
    assert stats["accuracy"] >= 0.9 and stats["agent"]["clean_correct"] >= 0.8 * 300
    row = next(r for r in read_traces(out).to_pylist() if r["correct"] and json.loads(r["agent"])["steps"] > 1)
    assert [m["role"] for m in json.loads(row["messages"])][-3:] == ["assistant", "tool", "assistant"]
    assert main(["curate", str(out), "--agent-filter", "--out", str(tmp_path / "ok")]) == 0
    student = tmp_path / "student"
    assert main(["train", "method=sft", "task.name=calc", "data.source=traces", f"data.traces={tmp_path / 'ok'}",
                 "student.name=preset:student", "train.steps=400", "train.batch_size=32", "eval.n=50",
                 "eval.max_new_tokens=64", "eval.fidelity=false", f"out={student}"]) == 0
    evaluated = tmp_path / "eval.json"
    assert main(["eval", "task.name=calc", "agent=code", "agent.sag=4", "eval.n=50", "eval.max_new_tokens=64",
                 "-m", f"student={student / 'model'}", "--json", str(evaluated)]) == 0
    r = json.loads(evaluated.read_text())["student"]
    assert r["agent"]["sag"] == 4 and r["accuracy"] > 0.3 and r["agent_steps"] >= 1


def test_real_chat_templates_generate_where_training_trains_and_mask_tool_turns():
    from retort.lm.config import ModelConfig
    from retort.lm.data.collate import IGNORE, encode_messages
    from retort.lm.models import load_tokenizer
    from retort.lm.models.packaged import PACKAGED, installed
    from retort.lm.rollout.agent import conversation_ids

    names = [n for n in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct") if installed(PACKAGED[n])]
    if not names:
        pytest.skip("no packaged chat model installed (`retort models` prints the install commands)")
    msgs = [{"role": "system", "content": "act"}, {"role": "user", "content": "Q:2*3"},
            {"role": "assistant", "content": "```python\nprint(2*3)\n```"}, {"role": "tool", "content": "6"},
            {"role": "assistant", "content": "```python\nfinal_answer(6)\n```"}]
    for name in names:
        tok = load_tokenizer(ModelConfig(name=name))
        full, ids = encode_messages(tok, msgs), conversation_ids(tok, msgs[:4])
        assert full.input_ids[:len(ids)] == ids and full.labels[len(ids)] != IGNORE, name
        trained = tok.decode([t for t in full.labels if t != IGNORE])
        assert "print(2*3)" in trained and "final_answer(6)" in trained and "6<" not in trained, name

"""Agent distillation end to end in the real sandbox: the calc toy's worked conversations run as an
agent, `retort traces agent=code` with a scripted teacher (known turns: FTP, resume, the stored
counts), `curate --agent-filter`, `sft` on the rows (assistant turns trained, tool turns masked)
and `retort eval agent=code` with SAG."""

import json
import shutil

import pytest

from conftest import tiny_overrides
from retort.cli import main
from retort.lm.config import AgentConfig, ModelConfig, TaskConfig
from retort.lm.data.collate import IGNORE, encode_messages
from retort.lm.data.traces import read_manifest, read_traces
from retort.lm.eval.agent import answer_reader, is_correct
from retort.lm.models import load_model
from retort.lm.rollout.agent import run_episodes, sandbox_executor
from retort.lm.rollout.generate import Completion
from retort.lm.tasks import get_task
from retort.lm.teachers.base import Teacher
from retort.sandbox import SandboxError, check

if shutil.which("bwrap") is None:
    pytest.skip("bubblewrap (bwrap) is not installed: actions cannot run here (.ci/run installs it)",
                allow_module_level=True)
try:
    check()
except SandboxError as e:
    pytest.skip(f"the sandbox cannot start on this machine: {e}", allow_module_level=True)


def replay(examples):
    """A policy that writes each calc question's worked conversation, one assistant turn a step."""
    by_prompt = {str(e.prompt): [m["content"] for m in e.messages if m["role"] == "assistant"] for e in examples}

    def policy(convs, prefixes, n):
        return [[by_prompt[m[0]["content"]][sum(x["role"] == "assistant" for x in m)]] * n for m in convs]

    return policy


def test_calc_worked_conversations_answer_in_the_sandbox_with_state_and_observations():
    task = get_task(TaskConfig(name="calc", difficulty={"steps_min": 2, "steps_max": 3}))
    examples = task.examples("test", 4)
    execute = sandbox_executor(AgentConfig().limits())
    episodes = run_episodes([e.prompt for e in examples], replay(examples), execute, max_steps=4)
    for e, ep in zip(examples, episodes):
        assert is_correct(task, ep.final, e) and (ep.parse_errors, ep.exec_errors) == (0, 0)
        assert ep.messages[1:] == e.messages  # the sandbox printed exactly the observations the task wrote


def test_the_sandbox_keeps_state_and_reports_errors_and_long_output():
    execute = sandbox_executor(AgentConfig().limits(), observation_chars=20)
    first = execute("x = 21\nprint('set')", ())
    assert first.ok and first.observation == "set"
    assert execute("final_answer(x * 2)", ("x = 21",)).final == "42"
    err = execute("print(x)", ())
    assert not err.ok and err.observation == "Error: NameError: name 'x' is not defined"
    long = execute("print('a' * 100)", ())
    assert long.observation.startswith("a" * 20 + "\n...(101 characters)")
    assert execute("open('/etc/hostname', 'w')", ()).observation.startswith("Error: ")  # the sandbox's read-only root


class ScriptedTeacher(Teacher):
    """A teacher that generates known text: a CoT answer for a plain prompt, for a conversation the
    next turn of `turns` (by the number of its assistant turns), with a wrong action first for
    questions whose first operand is odd. Counts its calls."""

    kind = "scripted"
    capabilities = frozenset({"generate"})

    def __init__(self, examples):
        super().__init__("scripted", load_model(ModelConfig(name="preset:nano"))[1])
        self.turns = {str(e.prompt): [m["content"] for m in e.messages if m["role"] == "assistant"] for e in examples}
        self.calls = 0

    def identity(self):
        return "scripted-1"

    def generate(self, prompts, *, num_samples=1, **_):
        self.calls += 1
        out = []
        for p in prompts:
            if not hasattr(p, "messages"):  # the CoT answer FTP takes its first paragraph from
                out.append([Completion("Multiply first.\n\nThen the rest.", [], "stop")] * num_samples)
                continue
            q = next(m["content"] for m in p.messages if m["role"] == "user")
            step = sum(m["role"] == "assistant" for m in p.messages)
            turns = self.turns[q]
            if int(q[2]) % 2:  # odd: a failing action first, then the worked ones
                turns = ["```python\nprint(undefined)\n```", *turns]
            text = turns[step] if step < len(turns) else "A:?"
            out.append([Completion(text, [], "stop")] * num_samples)
        return out


@pytest.fixture
def scripted(monkeypatch):
    task = get_task(TaskConfig(name="calc", difficulty={"steps_min": 2, "steps_max": 2}))
    teacher = ScriptedTeacher(task.examples("train", 6))
    monkeypatch.setattr("retort.lm.teachers.open_teacher", lambda *a, **k: teacher)
    return teacher


def traces_args(out, *extra):
    return ["traces", "agent=code", "task.name=calc", "task.difficulty.steps_min=2", "task.difficulty.steps_max=2",
            "n_prompts=6", "shard_prompts=3", "agent.max_steps=4", f"out={out}", *extra]


def test_agent_traces_rows_filter_resume_and_sft_masking(tmp_path, scripted, capsys):
    out = tmp_path / "agent"
    assert main(traces_args(out, "agent.first_thought=cot")) == 0, capsys.readouterr().err
    rows = read_traces(out).to_pylist()
    assert len(rows) == 6 and read_manifest(out)["params"]["agent"]["first_thought"] == "cot"
    for r in rows:
        msgs, rec = json.loads(r["messages"]), json.loads(r["agent"])
        odd = int(r["prompt"][2]) % 2
        assert [m["role"] for m in msgs] == ["user"] + ["assistant", "tool"] * (1 + odd) + ["assistant"]
        assert msgs[1]["content"].startswith("Thought: Multiply first.\n\n")  # FTP: the CoT's first paragraph
        assert rec["first_thought"] == "Thought: Multiply first.\n\n"
        assert r["correct"] and r["answer"] == r["reference"]
        assert (rec["steps"], rec["exec_errors"], rec["parse_errors"], rec["hit_max_steps"]) == (2 + odd, odd, 0, False)
        if odd:
            assert msgs[2]["content"] == "Error: NameError: name 'undefined' is not defined"
    # a rerun of the finished set asks the teacher nothing
    calls = scripted.calls
    assert main(traces_args(out, "agent.first_thought=cot")) == 0 and scripted.calls == calls
    # the paper's filter: correct, no parse or execution error, under max_steps
    assert main(["curate", str(out), "--agent-filter", "--out", str(tmp_path / "clean")]) == 0
    kept = read_traces(tmp_path / "clean").to_pylist()
    odd = sum(int(r["prompt"][2]) % 2 for r in rows)
    assert len(kept) == 6 - odd and all(not json.loads(r["agent"])["exec_errors"] for r in kept)
    applied = read_manifest(tmp_path / "clean")["params"]["filters"]["agent_filter"]
    assert applied == {"kept": 6 - odd, "dropped": {"incorrect": 0, "parse_error": 0, "exec_error": odd,
                                                    "hit_max_steps": 0, "not_agent": 0}}
    # sft on these rows trains the assistant turns only: tool (observation) tokens are masked
    _, tok = load_model(ModelConfig(name="preset:nano"))
    msgs = json.loads(next(r for r in rows if int(r["prompt"][2]) % 2)["messages"])  # one with an error turn
    enc = encode_messages(tok, msgs)
    trained = tok.decode([t for t in enc.labels if t != IGNORE])
    assert trained == "".join(m["content"] + "</s>" for m in msgs if m["role"] == "assistant")
    assert "NameError" in tok.decode(enc.input_ids) and "NameError" not in trained
    capsys.readouterr()
    rc = main(["train", *tiny_overrides(tmp_path / "sft", steps=2, **{
        "data.source": "traces", "data.traces": tmp_path / "clean", "task.name": "calc", "eval.fidelity": "false",
        "eval.n": 2, "eval.max_new_tokens": 24})])
    assert rc == 0, capsys.readouterr().err
    final = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert "agent_steps" in json.dumps(final)  # evaluated as an agent, as its teacher acted


def test_agent_traces_refusals(tmp_path, scripted, capsys):
    assert main(traces_args(tmp_path / "a", "program=python")) == 2
    assert "one way of answering at a time" in capsys.readouterr().err
    assert main(["curate", str(tmp_path / "none"), "--agent-filter"]) == 2  # a filter needs --out
    assert not (tmp_path / "a").exists()


def test_eval_agent_code_with_sag_reports_the_agent_metrics(tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["eval", "-m", "nano=preset:nano", "task.name=calc", "eval.n=3", "eval.max_new_tokens=24",
               "agent=code", "agent.max_steps=2", "agent.sag=3", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())["nano"]
    assert r["n"] == 3 and r["agent"] == {"max_steps": 2, "sag": 3}
    for key in ("accuracy", "agent_steps", "parse_error_rate", "exec_error_rate", "hit_max_steps", "sag_survivors"):
        assert key in r
    assert 1 <= r["agent_steps"] <= 2 and r["samples"][0]["messages"][0]["role"] == "user"
    assert r["samples"][0]["completion"].startswith("[assistant] ")  # the episode as text, for the report
    assert main(["eval", "-m", "nano=preset:nano", "task.name=calc", "eval.n=2", "eval.k=2", "agent=code"]) == 2
    assert "eval.k=2 with agent=code" in capsys.readouterr().err


def test_answer_reader_reads_only_the_tasks_own_format():
    task = get_task(TaskConfig(name="calc"))
    read = answer_reader(task)
    assert read("A:42", "Q:6*7\n") == "42" and read("maybe 42", "Q:6*7\n") is None


def test_an_api_teacher_gets_the_conversation_through_its_chat_endpoint(tmp_path, capsys):
    from apiserver import ApiServer

    from retort.config import load_config
    from retort.lm.config import TracesRun
    from retort.lm.rollout.agent import Conversation
    from retort.lm.teachers.api import ApiTeacher

    teacher = ApiTeacher(load_config(TracesRun, None, ["teacher.name=openai:m",
                                                       "teacher.api.base_url=http://127.0.0.1:9/v1"]).teacher)
    msgs = [{"role": "system", "content": "act"}, {"role": "user", "content": "Q:1+2"},
            {"role": "assistant", "content": "```python\nprint(1+2)\n```"}, {"role": "tool", "content": "3"}]
    path, body = teacher.body(Conversation(msgs, "Thought: "), max_tokens=8, temperature=0.0, top_p=1.0, seed=0)
    assert path == "/chat/completions" and body["messages"] == [*msgs, {"role": "assistant", "content": "Thought: "}]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    # a server that never writes code: every step a parse error, so each episode runs its 2 steps
    with ApiServer() as s:
        out = tmp_path / "api"
        assert main(["traces", "agent=code", "task.name=calc", "n_prompts=2", "agent.max_steps=2",
                     "teacher.name=openai:m", f"teacher.api.base_url={s.url}", f"out={out}"]) == 0, \
            capsys.readouterr().err
        asked = [e for e in s.log if e.get("path", "").endswith("/chat/completions")]
    assert len(asked) == 4  # 2 questions x 2 steps
    for r in read_traces(out).to_pylist():
        rec = json.loads(r["agent"])
        assert (rec["steps"], rec["parse_errors"], rec["hit_max_steps"], r["correct"]) == (2, 2, True, False)
        # calc's teacher is trained on the format: no system turn (agent.system=auto)
        assert [m["role"] for m in json.loads(r["messages"])] == ["user", "assistant", "tool", "assistant", "tool"]


def test_ftp_reads_the_first_paragraph_from_a_cot_trace_set(tmp_path, scripted, capsys):
    from retort.lm.data.traces import SCHEMA, TraceWriter

    task = get_task(TaskConfig(name="calc", difficulty={"steps_min": 2, "steps_max": 2}))
    prompts = [str(e.prompt) for e in task.examples("train", 6)]
    cot = tmp_path / "cot"
    writer = TraceWriter(cot, {"teacher": {"name": "scripted"}}, {}, {0: 6})
    writer.write_shard(0, [{**{k: None for k in SCHEMA.names}, "prompt_id": f"p{i}", "sample_idx": 0, "prompt": p,
                            "completion": f"Step {i} first.\nStill first.\n\nSecond.", "completion_ids": [],
                            "completion_logprobs": [], "correct": True} for i, p in enumerate(prompts)])
    writer.finish({})
    out = tmp_path / "ftp"
    assert main(traces_args(out, "agent.first_thought=cot", f"agent.cot={cot}")) == 0, capsys.readouterr().err
    for r in read_traces(out).to_pylist():
        i = prompts.index(r["prompt"])
        first = json.loads(r["messages"])[1]["content"]
        assert first.startswith(f"Thought: Step {i} first.\nStill first.\n\n```python\n")
    missing = tmp_path / "cot2"
    writer = TraceWriter(missing, {"teacher": {"name": "scripted"}}, {}, {0: 0})
    writer.write_shard(0, [])
    writer.finish({})
    assert main(traces_args(tmp_path / "x", "agent.first_thought=cot", f"agent.cot={missing}")) == 2
    assert "no CoT answer to 6 of the questions" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(traces_args(tmp_path / "y", f"agent.cot={cot}")) == 2
    assert "agent.first_thought=cot" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_a_run_that_failed_mid_way_continues_from_its_finished_shards(tmp_path, scripted, capsys):
    out = tmp_path / "resume"
    real = scripted.generate
    asked = []

    def failing(prompts, **kw):
        asked.append({str(p) for p in prompts})
        if not asked[-1] & asked[0]:  # the first call of shard 2 (other questions than shard 1's) fails
            raise RuntimeError("the server went away")
        return real(prompts, **kw)

    scripted.generate = failing
    with pytest.raises(RuntimeError):
        main(traces_args(out))
    assert len(read_traces(out, allow_incomplete=True)) == 3  # shard 1 is whole and kept
    first, again = asked[0], []

    def recording(prompts, **kw):
        again.append({str(p) for p in prompts})
        return real(prompts, **kw)

    scripted.generate = recording
    assert main(traces_args(out)) == 0, capsys.readouterr().err
    rows = read_traces(out).to_pylist()
    assert len(rows) == 6 and len({r["prompt_id"] for r in rows}) == 6 and all(r["correct"] for r in rows)
    assert again and not any(a & first for a in again)  # shard 1's questions are not asked again

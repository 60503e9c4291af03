"""The CodeAct loop (`retort.lm.rollout.agent`) with a scripted policy and a scripted executor:
known turns and known outputs, so every count, the FTP prefix and SAG's majority are exact."""

from retort.lm.rollout.agent import (NO_CODE, Outcome, choose, conversation_ids, first_thought, parse_action,
                                     run_episodes)


def act(code, thought="Thought: go.\n"):
    return f"{thought}```python\n{code}\n```"


class Scripted:
    """A policy answering a conversation by its number of assistant turns so far: `turns[step]` (a
    list of n samples, or one text for every sample); records what it was asked."""

    def __init__(self, turns):
        self.turns, self.calls = turns, []

    def __call__(self, convs, prefixes, n):
        self.calls.append((len(convs), list(prefixes), n))
        out = []
        for m in convs:
            t = self.turns[sum(x["role"] == "assistant" for x in m)]
            out.append(list(t) if isinstance(t, list) else [t] * n)
        return out


def executor(table):
    """Known outputs: code -> Outcome (a `final_answer(x)` call gives final x); records the state
    (earlier cells) each call ran after."""
    seen = []

    def execute(code, cells):
        seen.append((code, cells))
        if code.startswith("final_answer("):
            return Outcome(True, "", "", code[len("final_answer("):-1])
        return table[code]

    execute.seen = seen
    return execute


def test_parse_action_cuts_after_the_block_and_needs_a_python_fence():
    turn, code = parse_action("Thought: x\n```python\nprint(1)\n```\nObservation: 1 (invented)\n```python\nno\n```")
    assert code == "print(1)" and turn == "Thought: x\n```python\nprint(1)\n```"
    assert parse_action("the answer is 5") == ("the answer is 5", None)
    assert parse_action("```python\nprint(1)")[1] is None  # never closed: a parse error
    assert first_thought("First, multiply.\nThen add.\n\nSo 42.") == "Thought: First, multiply.\nThen add.\n\n"


def test_an_episode_keeps_state_counts_errors_and_ends_at_final_answer():
    turns = [act("x = 6"), act("print(y)"), "I think it is 42", act("print(x * 7)"), act("final_answer(42)")]
    execute = executor({"x = 6": Outcome(True, "(no output)", ""),
                        "print(y)": Outcome(False, "Error: NameError: name 'y' is not defined", ""),
                        "print(x * 7)": Outcome(True, "42", "42\n")})
    [ep] = run_episodes(["Q:6*7"], Scripted(turns), execute, max_steps=6)
    assert ep.final == "42" and ep.done and not ep.hit_max_steps
    assert (ep.steps, ep.parse_errors, ep.exec_errors) == (5, 1, 1)
    roles = [m["role"] for m in ep.messages]
    assert roles == ["user"] + ["assistant", "tool"] * 4 + ["assistant"]
    assert ep.messages[4]["content"] == "Error: NameError: name 'y' is not defined"
    assert ep.messages[6]["content"] == NO_CODE and ep.messages[8]["content"] == "42"
    # the state: each action runs after those that ran without error (not the failed print(y))
    assert execute.seen[-2] == ("print(x * 7)", ("x = 6",)) and ep.cells == ["x = 6", "print(x * 7)", "final_answer(42)"]
    assert ep.record() == {"steps": 5, "parse_errors": 1, "exec_errors": 1, "hit_max_steps": False,
                           "final_answer": "42"}


def test_max_steps_and_the_tasks_answer_format():
    execute = executor({"print(1)": Outcome(True, "1", "1\n")})
    [ep] = run_episodes(["q"], Scripted([act("print(1)")] * 3), execute, max_steps=3)
    assert ep.hit_max_steps and ep.final is None and ep.steps == 3 and ep.messages[-1]["role"] == "tool"
    read = lambda text, prompt: text[2:] if text.startswith("A:") else None  # noqa: E731
    [ep] = run_episodes(["q"], Scripted([act("print(1)"), "A:1"]), execute, max_steps=3, answer_of=read)
    assert (ep.final, ep.steps, ep.parse_errors, ep.hit_max_steps) == ("1", 2, 0, False)


def test_first_thought_prefix_seeds_step_one_only_and_stays_in_the_turn():
    policy = Scripted(["```python\nfinal_answer(3)\n```"])
    [ep] = run_episodes(["q"], policy, executor({}), prefixes=["Thought: add them.\n\n"], system="be an agent")
    assert policy.calls == [(1, ["Thought: add them.\n\n"], 1)]
    assert ep.messages[0] == {"role": "system", "content": "be an agent"}
    assert ep.messages[-1]["content"] == "Thought: add them.\n\n```python\nfinal_answer(3)\n```" and ep.final == "3"


def test_sag_takes_the_majority_by_output_of_the_actions_that_parse_and_run():
    samples = ["no code here", act("print(8)"), act("boom()"), act("print(3 + 4)"), act("print(7)")]
    execute = executor({"print(8)": Outcome(True, "8", "8\n"), "boom()": Outcome(False, "Error: NameError", ""),
                        "print(3 + 4)": Outcome(True, "7", "7\n"), "print(7)": Outcome(True, "7", "7\n")})
    policy = Scripted([samples, [act("final_answer(7)")] * 5])
    [ep] = run_episodes(["q"], policy, execute, max_steps=2, sag=5)
    assert [c[2] for c in policy.calls] == [5, 5]
    assert ep.messages[1]["content"] == act("print(3 + 4)")  # the first of the largest group ("7": two)
    assert ep.messages[2]["content"] == "7" and ep.final == "7" and ep.exec_errors == 0 and ep.parse_errors == 0
    assert ep.sag[0] == [5, 3, 2]  # 5 sampled, 3 parsed and ran, the majority holds 2
    # none survives: the first sample, with its error counted
    [ep] = run_episodes(["q"], Scripted([["no code", act("boom()")]]), execute, max_steps=1, sag=2)
    assert ep.messages[1]["content"] == "no code" and ep.parse_errors == 1 and ep.hit_max_steps


def test_choose_breaks_ties_by_the_group_seen_first():
    ok = lambda out: Outcome(True, out, out)  # noqa: E731
    assert choose([("a", "c", ok("1")), ("b", "c", ok("2")), ("c", "c", ok("2")), ("d", "c", ok("1"))]) == 0
    assert choose([("a", None, None), ("b", "c", Outcome(False, "Error", ""))]) == 0


def test_conversation_ids_are_the_training_rendering_up_to_the_next_turn():
    from retort.lm.config import ModelConfig
    from retort.lm.data.collate import IGNORE, encode_messages
    from retort.lm.models import load_model

    _, tok = load_model(ModelConfig(name="preset:nano"))
    msgs = [{"role": "user", "content": "Q:2*3\n"}, {"role": "assistant", "content": act("print(2*3)", "")},
            {"role": "tool", "content": "6"}, {"role": "assistant", "content": act("final_answer(6)", "")}]
    full = encode_messages(tok, msgs)
    ids = conversation_ids(tok, msgs[:3])
    assert full.input_ids[:len(ids)] == ids and full.labels[len(ids) - 1] == IGNORE != full.labels[len(ids)]
    assert conversation_ids(tok, msgs[:3], "Thought: ")[len(ids):] == tok("Thought: ", add_special_tokens=False)["input_ids"]


def test_sft_on_calc_solutions_trains_the_assistant_turns_of_its_conversations():
    from types import SimpleNamespace

    from retort.lm.config import DataConfig, ModelConfig, TaskConfig
    from retort.lm.data.collate import IGNORE
    from retort.lm.methods.examples import data_examples
    from retort.lm.models import load_model
    from retort.lm.tasks import get_task

    _, tok = load_model(ModelConfig(name="preset:nano"))
    task = get_task(TaskConfig(name="calc", difficulty={"steps_min": 2, "steps_max": 2}))
    rows = task.examples("train", 3)
    ctx = SimpleNamespace(run=SimpleNamespace(data=DataConfig(source="solutions", max_len=160), seed=0), tokenizer=tok,
                          task=task, train_rows=lambda: rows, dropped=lambda *a: None, cycle=lambda xs: xs)
    for enc, ex in zip(data_examples(ctx), rows):
        trained = tok.decode([t for t in enc.labels if t != IGNORE])
        assert trained == "".join(m["content"] + "</s>" for m in ex.messages if m["role"] == "assistant")
        assert ex.messages[1]["content"] in tok.decode(enc.input_ids)  # the observation is there, masked


def test_agent_config_takes_the_shorthand_on_the_command_line_and_in_yaml(tmp_path):
    import pytest

    from retort.config import load_config
    from retort.errors import ConfigError
    from retort.lm.config import EvalRun, TracesRun

    assert load_config(TracesRun, None, ["agent=code", "agent.max_steps=3"]).agent.kind == "code"
    (tmp_path / "a.yaml").write_text("agent: code\n")
    run = load_config(EvalRun, str(tmp_path / "a.yaml"), ["agent.sag=4"])
    assert (run.agent.kind, run.agent.sag, run.agent.max_steps) == ("code", 4, 5)
    with pytest.raises(ConfigError, match="agent.kind='cot' is not allowed; expected one of: none, code"):
        load_config(TracesRun, None, ["agent=cot"])
    with pytest.raises(ConfigError, match="unknown key 'agent.steps'; valid keys under 'agent': kind, max_steps"):
        load_config(TracesRun, None, ["agent.steps=3"])


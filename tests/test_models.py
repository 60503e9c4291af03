import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from retort.lm.config import ModelConfig
from retort.errors import ModelError
from retort.lm.models import PRESETS, char_tokenizer, check_vocab, load_model, preset_config, save_model
from retort.lm.rollout import generate


def test_char_tokenizer_round_trips_and_adds_bos():
    tok = char_tokenizer()
    text = "Q:7+5*3\n7+5=2\nA:2 {x}"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.pad_token_id == 0 and tok.eos_token_id == 2


def test_student_preset_is_over_10x_smaller_than_teacher():
    n = {k: sum(p.numel() for p in LlamaForCausalLM(preset_config(k, 100)).parameters()) for k in PRESETS}
    assert n["teacher"] >= 10 * n["student"]


def test_checkpoint_reloads_in_plain_transformers_with_same_greedy_tokens(tmp_path):
    model, tok = load_model(ModelConfig(name="preset:nano"), seed=3)
    with torch.no_grad():  # make the random model less uniform so greedy paths differ per prompt
        for p in model.parameters():
            p.mul_(8)
    save_model(model, tok, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    plain_model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    plain_tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    prompts = ["Q:1+2*3\n", "Q:9-4\n", "Q:c=b+3,a=4,b=a*2;c?\n"]
    ours = generate(model, tok, prompts, max_new_tokens=15, batch_size=3)
    for prompt, got in zip(prompts, ours):
        ids = plain_tok(prompt, return_tensors="pt")
        out = plain_model.generate(**ids, max_new_tokens=15, do_sample=False, pad_token_id=plain_tok.pad_token_id)
        plain = out[0, ids["input_ids"].shape[1]:].tolist()
        if plain_tok.eos_token_id in plain:
            plain = plain[:plain.index(plain_tok.eos_token_id)]
        assert got[0].token_ids == plain


def test_vocab_check_accepts_padded_embeddings_and_rejects_other_vocab():
    tok = char_tokenizer()
    small = LlamaForCausalLM(preset_config("nano", len(tok)))
    padded = LlamaForCausalLM(preset_config("nano", 128))  # padded like Qwen's 151936 vs 152064
    assert check_vocab(tok, tok, small, padded).size == len(tok)
    other = char_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(ModelError, match="tokenizers differ"):
        check_vocab(tok, other)
    with pytest.raises(ModelError, match="output layer has 50 rows"):
        check_vocab(tok, tok, LlamaForCausalLM(preset_config("nano", 50)), None)


def test_bad_model_paths_fail_clearly(tmp_path):
    with pytest.raises(ModelError, match="model path not found"):
        load_model(ModelConfig(name="./no/such/dir"))
    with pytest.raises(ModelError, match="no config.json"):
        load_model(ModelConfig(name=str(tmp_path)))
    with pytest.raises(ModelError, match="model file not found"):
        load_model(ModelConfig(name=str(tmp_path / "x.gguf")))
    with pytest.raises(ModelError, match="unknown preset"):
        load_model(ModelConfig(name="preset:huge"))
    with pytest.raises(ModelError, match="run `retort teacher` first"):
        load_model(ModelConfig(name="builtin:teacher"))


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="could not load model 'retort-test/not-a-model' as a hub id"):
        load_model(ModelConfig(name="retort-test/not-a-model"))


def test_trust_remote_code_is_off_by_default():
    assert ModelConfig().trust_remote_code is False

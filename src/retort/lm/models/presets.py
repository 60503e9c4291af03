"""Built-in tiny presets: Llama-architecture configs and a character-level tokenizer.

The tokenizer is a real `PreTrainedTokenizerFast` (a `tokenizers` BPE model with no merges over
single characters, so each character is one token), saved with `save_pretrained`: any retort
checkpoint reloads with plain `AutoTokenizer` / `AutoModelForCausalLM`.
"""

from __future__ import annotations

import string

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))

# name -> LlamaConfig fields. Sizes were chosen by measurement (BENCHMARKS.md): the teacher learns
# the built-in tasks with worked solutions in minutes on 2 CPU cores; the student is >10x smaller.
PRESETS: dict[str, dict] = {
    "teacher": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6,
                    num_key_value_heads=6),
    "student": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=4),
    "nano": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2),
}


def char_tokenizer():
    """A character-level tokenizer over printable ASCII and newline, with pad/bos/eos/unk."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *CHARS])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=1024, padding_side="left",
    )
    return tok


def preset_config(name: str, vocab_size: int, max_len: int = 512):
    from transformers import LlamaConfig

    from ...errors import ModelError

    if name not in PRESETS:
        raise ModelError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return LlamaConfig(
        vocab_size=vocab_size, max_position_embeddings=max_len, rms_norm_eps=1e-5,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        **PRESETS[name],
    )


assert set(string.digits) <= set(CHARS)

"""Models: presets, loading from anywhere a user keeps weights, saving, vocabulary checks."""

from .load import VocabMap, builtin_teacher_dir, cache_dir, check_vocab, load_model, load_tokenizer, save_model
from .presets import PRESETS, char_tokenizer, preset_config

__all__ = ["PRESETS", "VocabMap", "builtin_teacher_dir", "cache_dir", "char_tokenizer", "check_vocab",
           "load_model", "load_tokenizer", "preset_config", "save_model"]

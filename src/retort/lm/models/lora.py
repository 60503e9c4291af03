"""LoRA students (optional extra `peft`, `student.lora.r > 0`).

The loaded student is wrapped with PEFT's LoRA (Hu et al. 2021, arXiv:2106.09685): every linear
layer named in `student.lora.target_modules` gets `W x + (alpha / r) B A x`, A random and B zero at
the start (so the wrapped model starts exactly where the loaded one was), and only A and B train.

Saving, the choice made here:
- checkpoints (`ckpt/step-N/model/`) hold the adapter only, in PEFT's format (adapter_config.json,
  adapter_model.safetensors) plus the tokenizer. On `--resume` the base weights are loaded again from
  `student` exactly as the run first loaded them (resume refuses a changed config), then the adapter
  is read back (`resume`): small checkpoints, at the cost of trusting that `student.name` still
  holds the same weights;
- the run's final `model/` has the adapters merged into the base weights (`merge`): a plain model
  that `retort eval` and `AutoModelForCausalLM` load, with no peft needed.

`AdaptersDisabled` is the base model seen through the LoRA model (OPSD's frozen teacher): the
initial student, with no second copy of its weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from ...errors import ConfigError, ModelError


def _peft(r: int):
    try:
        import peft
    except ImportError:
        raise ConfigError(f"student.lora.r={r} trains LoRA adapters, which needs the 'peft' package: "
                          "pip install peft (or pip install 'retort[peft]'); student.lora.r=0 trains the whole "
                          "model") from None
    return peft


def check_available(cfg) -> None:
    """Fail before anything is loaded when LoRA is asked for and peft is missing."""
    if cfg.r:
        _peft(cfg.r)


def is_lora(model) -> bool:
    """Whether `model` is a PEFT model (the unwrapped student of a LoRA run)."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def wrap(model, cfg):
    """`model` with LoRA adapters on `cfg.target_modules` (a `LoraConfig`); only they train."""
    peft = _peft(cfg.r)
    leaves = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in cfg.target_modules if t not in leaves]
    if missing:
        raise ConfigError(f"student.lora.target_modules: {type(model).__name__} has no linear layer named "
                          f"{', '.join(missing)}; its linear layers: {', '.join(sorted(leaves))}")
    conf = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, conf)


def resume(model, adapter_dir: Path):
    """The base `model` with the trainable adapter saved in a checkpoint's `model/` directory."""
    peft = _peft(1)
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: no adapter_config.json; this checkpoint was not written by a LoRA run")
    return peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def merge(model):
    """The plain model with the adapters folded into its base weights (in place: the LoRA model is
    unusable afterwards). A model without adapters is returned as it is."""
    return model.merge_and_unload() if is_lora(model) else model


def param_counts(model) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


class AdaptersDisabled:
    """The base model under a PEFT LoRA model, as a frozen model. Calling it runs the LoRA model with
    its adapters disabled, in eval mode and without gradient: the student as the run started it
    (B starts at zero and the base weights never train), sharing the student's weights. It is not
    an nn.Module on purpose, so `.eval()` / `.requires_grad_(False)` on a teacher cannot reach the
    student through it."""

    def __init__(self, model):
        if not is_lora(model):
            raise TypeError(f"AdaptersDisabled needs a PEFT model, got {type(model).__name__}")
        self.model = model

    @contextmanager
    def disabled(self):
        """The LoRA model itself, adapters off and in eval mode, for the duration of the block."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                yield self.model
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def __call__(self, **kwargs):
        with self.disabled() as m:
            return m(**kwargs)

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()


def effective_weight(layer) -> torch.Tensor:
    """The weight matrix a linear layer applies now: its own, or for a PEFT LoRA layer the base
    weight plus B A * scaling of each active adapter that is not merged (none while the adapters are
    disabled). For code that reads weights instead of calling the layer (the fast rollout engine)."""
    base = getattr(layer, "base_layer", None)
    if base is None:
        return layer.weight
    if layer.disable_adapters and layer.merged:
        raise ValueError("adapters disabled while merged into the base weights; unmerge them first")
    w = base.weight
    if layer.disable_adapters:
        return w
    for name in layer.active_adapters:
        if name in layer.lora_A and name not in layer.merged_adapters:
            w = w + layer.get_delta_weight(name).to(w.dtype)
    return w

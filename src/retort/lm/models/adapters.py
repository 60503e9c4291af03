"""Several LoRA adapters on one base model, switched in place (LoRID's three reasoners, `retort eval
--lorid`).

The base weights are loaded once; each adapter (PEFT's `adapter_config.json` +
`adapter_model.safetensors`, as a LoRA run writes to `RUN_DIR/adapter`) is added under its own
name, and `use(name)` makes it the active one with PEFT's `set_adapter`: switching costs nothing
and never reloads or copies the base. The adapters are kept unmerged, so the base stays the base
(merging one into the weights, as `lora.merge` does at the end of a run, would change what the
others see)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ...errors import ModelError
from .lora import _peft


def check_adapter_dir(path, what: str) -> Path:
    """`path` when it holds a PEFT adapter; else one ModelError naming `what` and the file missing."""
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise ModelError(f"{what}: {path} holds no LoRA adapter (no adapter_config.json)")
    if not (path / "adapter_model.safetensors").is_file():
        raise ModelError(f"{what}: {path} has adapter_config.json but no adapter_model.safetensors (only "
                         "safetensors weights are read)")
    return path


class Adapters:
    """`base` (a transformers model) with the adapters `paths` (name -> directory) loaded under their
    names, in eval mode; `use(name)` runs the model with that adapter alone active."""

    def __init__(self, base, paths: dict):
        if not paths:
            raise ValueError("Adapters needs at least one adapter")
        peft = _peft(1)
        names = list(paths)
        for name in names:
            check_adapter_dir(paths[name], f"adapter {name}")
        self.model = peft.PeftModel.from_pretrained(base, str(paths[names[0]]), adapter_name=names[0],
                                                    is_trainable=False)
        for name in names[1:]:
            self.model.load_adapter(str(paths[name]), adapter_name=name, is_trainable=False)
        self.model.eval()
        self.names = tuple(names)

    @property
    def base(self):
        """The one base model under every adapter (its LoRA layers in place)."""
        return self.model.get_base_model()

    def activate(self, name: str):
        """Make adapter `name` the active one; returns the model."""
        if name not in self.names:
            raise ModelError(f"no adapter named {name!r}; loaded: {', '.join(self.names)}")
        self.model.set_adapter(name)
        return self.model

    @contextmanager
    def use(self, name: str):
        """The model with adapter `name` active for the block (the previous one afterwards)."""
        before = self.model.active_adapter
        try:
            yield self.activate(name)
        finally:
            self.model.set_adapter(before)

    def parameters(self):
        return self.model.parameters()


__all__ = ["Adapters", "check_adapter_dir"]

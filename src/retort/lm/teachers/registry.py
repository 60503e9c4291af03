"""Teacher kinds by name: `teacher.name` picks one (`KINDS`: `traces:DIR`, `openai:MODEL`; anything
else is a local model), what it can do is known without loading it (`capabilities_of`), a method's
needs are checked before step 0 (`check_capabilities`), and `open_teacher` loads it, once per
process while it is in use (a training run's fidelity evaluation gets the run's own teacher, not
a second copy of its weights)."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Optional

from ...errors import ConfigError
from .api import ApiTeacher
from .base import Teacher
from .local import LocalTeacher
from .store import TraceStoreTeacher


# `teacher.name` prefix -> the Teacher class of that kind (no prefix: a local model)
KINDS: dict[str, type[Teacher]] = {"traces": TraceStoreTeacher, "openai": ApiTeacher}


def _kind(name: str) -> Optional[str]:
    prefix = name.split(":", 1)[0]
    return prefix if ":" in name and prefix in KINDS else None


def capabilities_of(name: str) -> frozenset:
    """What the teacher `teacher.name` names can do, known without loading it."""
    kind = _kind(name)
    if kind is None:
        return LocalTeacher.capabilities
    return KINDS[kind].capabilities


def check_capabilities(method: str, needs: tuple, teacher_name: str) -> None:
    """Refuse, before step 0, a teacher that lacks every set of capabilities `needs` lists (each
    set is one way the method can work, e.g. `hidden`, or `score` for the sparse top-k path)."""
    if not needs:
        return
    have = capabilities_of(teacher_name)
    if any(set(way) <= have for way in needs):
        return
    ways = " or ".join("+".join(sorted(w)) for w in needs)
    kinds = {"local model": LocalTeacher, **{f"{prefix}:": cls for prefix, cls in KINDS.items()}}
    missing = sorted({c for w in needs for c in w} - have)
    where = "; ".join(f"{c}: {', '.join(k for k, cls in kinds.items() if c in cls.capabilities) or 'none yet'}"
                      for c in missing)
    raise ConfigError(f"method {method} needs a teacher that can {ways}; teacher.name={teacher_name} can "
                      f"{', '.join(sorted(have)) or 'nothing'} (teachers that can {where})")


def open_teacher(cfg, *, seed: int = 0, device="cpu") -> Teacher:
    """The Teacher a `ModelConfig` names, loaded and frozen."""
    kind = _kind(cfg.name)
    if kind == "openai":
        return KINDS[kind](cfg)
    if kind is not None:
        return KINDS[kind](cfg.name.split(":", 1)[1])
    key = _open_key(cfg, seed, device)
    teacher = _OPEN.get(key)
    if teacher is not None:
        return teacher
    from ..models import load_model

    model, tok = load_model(cfg, seed=seed)
    teacher = LocalTeacher(cfg.name, model.to(device).eval().requires_grad_(False), tok)
    _OPEN[key] = teacher
    return teacher


# The local teachers open in this process, while something holds them (a method, an evaluator):
# frozen, so sharing one is safe, and a 0.5B teacher is 2.5 GB of fp32 weights that a run's final
# evaluation (fidelity to the teacher) would otherwise load a second time beside the first.
_OPEN: weakref.WeakValueDictionary[tuple, LocalTeacher] = weakref.WeakValueDictionary()


def _open_key(cfg, seed: int, device) -> tuple:
    """What makes two opened teachers the same: the whole model config, the seed (a preset's
    weights), the device, and for a model on disk its files' sizes and times (retrained in place:
    another teacher)."""
    import torch

    path = Path(cfg.name).expanduser()
    if cfg.name.startswith("builtin:"):  # builtin:teacher[-TASK], as retort.lm.models.load resolves it
        from ..models.load import builtin_teacher_dir

        path = builtin_teacher_dir(cfg.name.split(":", 1)[1].removeprefix("teacher").removeprefix("-")
                                   or "modchain") / "model"
    files = sorted(path.iterdir()) if path.is_dir() else [path] if path.is_file() else []
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())
    return repr(cfg), seed, str(torch.device(device)), stamp


__all__ = ["KINDS", "capabilities_of", "check_capabilities", "open_teacher"]

"""Checkpoints: everything needed to continue a run exactly.

`ckpt/step-NNNNNNN/` holds `model/` (the track's format: for language models save_pretrained,
safetensors, plus tokenizer; for a LoRA student only the adapter), `accelerate/` (accelerate's
`save_state`: the optimizers of the student and of the method's modules, sharded per process under
FSDP, and every process's RNG streams; read back with weights_only), `scheduler.pt`, `method/` (the
method's own state and the modules it owns with their schedules: `save_method_state`) and
`state.json` (step, tokens seen, train time so far, and the size and SHA-256 of every other file).
Checkpoints of earlier versions (`optimizer.pt`, `rng-RANK.json`) still resume. A checkpoint is written under `step-N.tmp`, its files
synced, and renamed when whole, so a crash never leaves a partial one; a checkpoint damaged later
(a disk error, a copy cut short) fails `check_checkpoint` and `resumable_checkpoint` moves it aside
as `damaged-step-N` and falls back to the previous one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..paths import sha256_file

PREFIX = "step-"


def set_rng_state(state: dict) -> None:
    """Restore the RNG streams a checkpoint of an earlier version wrote (`rng-RANK.json`)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    torch.random.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "ckpt"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and not p.name.endswith(".tmp")
            and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _files(ckpt: Path) -> dict[str, list]:
    """[size, sha256] of every file of a checkpoint but state.json, by path relative to it."""
    return {str(f.relative_to(ckpt)): [f.stat().st_size, sha256_file(f)]
            for f in sorted(ckpt.rglob("*")) if f.is_file() and f.name != "state.json"}


def _fsync_tree(root: Path) -> None:
    for f in root.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def check_checkpoint(ckpt: Path) -> Optional[str]:
    """None if the checkpoint is whole, else what is wrong with it. Checkpoints that record their
    files' hashes are checked against them; older ones by reading every file as resume would."""
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except (OSError, ValueError) as e:
        return f"state.json unreadable ({e})"
    recorded = state.get("files")
    if recorded is not None:
        for rel, (size, digest) in recorded.items():
            f = ckpt / rel
            if not f.is_file():
                return f"{rel} is missing"
            if f.stat().st_size != size:
                return f"{rel} has {f.stat().st_size} bytes, {size} when saved"
            if sha256_file(f) != digest:
                return f"{rel} does not match its checksum"
        return None
    try:  # written before checkpoints recorded their hashes: read everything back
        from accelerate.utils import load as accelerate_load
        from safetensors import safe_open

        for f in sorted(ckpt.rglob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    st.get_tensor(key)
        for f in sorted([*ckpt.rglob("*.pt"), *ckpt.rglob("*.bin"), *ckpt.rglob("*.pkl")]):
            accelerate_load(f, map_location="cpu")  # weights_only, NumPy's RNG state admitted
    except Exception as e:  # safetensors, torch and pickle each raise their own types for a cut file
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def resumable_checkpoint(run_dir: Path, log: Callable[[str], None] = lambda msg: None,
                         main: bool = True) -> Optional[Path]:
    """The newest whole checkpoint of a run. Each damaged one newer than it is reported through
    `log` and (on the main process) renamed `damaged-step-N`, out of the way of the steps that will
    write it again; None when there is no checkpoint at all. Raises when every one is damaged."""
    found = list_checkpoints(run_dir)
    for ckpt in reversed(found):
        problem = check_checkpoint(ckpt)
        if problem is None:
            return ckpt
        aside = ckpt.with_name("damaged-" + ckpt.name)
        if main:
            os.replace(ckpt, aside)
        older = [c for c in found if c != ckpt and int(c.name[len(PREFIX):]) < int(ckpt.name[len(PREFIX):])]
        log(f"checkpoint {ckpt} is damaged ({problem}); moved to {aside.name}"
            + (f"; resuming from the previous one, {older[-1].name}" if older else ""))
    if found:
        from ..errors import RetortError

        raise RetortError(f"{run_dir}: every checkpoint is damaged (moved aside as damaged-step-N); "
                          "start the run again in another out= directory")
    return None


ACCELERATE = "accelerate"


def sharded(accelerator) -> bool:
    """Whether the model's weights are sharded over processes (FSDP): saving them needs a gather."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def use_accelerate_state(accelerator) -> None:
    """Let `save_state` / `load_state` handle optimizers and RNG but not the models: the track saves
    and loads them (a Hugging Face directory, a LoRA adapter), so they are not written twice."""
    accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())


def save_checkpoint(run_dir: Path, step: int, *, accelerator, model, save_model, optimizer, scheduler,
                    state: dict, keep: int, method=None, owned: dict | None = None, extra=None) -> Path:
    """`save_model(unwrapped model, directory, full state dict or None)` writes the model part (the
    track's format; the state dict is gathered from the shards under FSDP); `extra(directory)`, on
    the main process, anything else the checkpoint must hold (the weight average). Called on every
    process."""
    root = Path(run_dir) / "ckpt"
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f"{PREFIX}{step:07d}.tmp"
    if (final / "state.json").is_file():
        return final  # this step is already saved (a finished run resumed again)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # accelerate's state saving: the optimizers of the student and of the method's modules (under
    # FSDP each process writes its shard) and every process's RNG streams; the models are left to
    # the track (`use_accelerate_state`), which writes them in their own format
    accelerator.save_state(str(tmp / ACCELERATE))
    full = accelerator.get_state_dict(model) if sharded(accelerator) else None  # every process joins the gather
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), tmp / "model", full)
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if method is not None:
            save_method_state(tmp, method, owned or {}, accelerator.unwrap_model, optimizers=False)
        if extra is not None:
            extra(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync_tree(tmp)
        (tmp / "state.json").write_text(json.dumps({"step": step, **state, "files": _files(tmp)}))
        _fsync_tree(tmp)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


METHOD_DIR = "method"


def save_method_state(ckpt: Path, method, owned: dict, unwrap, *, optimizers: bool = True) -> None:
    """A method's own state into `ckpt/method/`: `state.safetensors` + `state.json` (what
    `method.state_dict()` returns, tensors and JSON values apart), and for each owned module NAME
    `NAME.safetensors`, `NAME.scheduler.pt` (and `NAME.optimizer.pt` in checkpoints that predate
    accelerate's state saving; `optimizers=False` leaves them to it)."""
    from safetensors.torch import save_file

    state = method.state_dict()
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    if not state and not owned:
        return
    root = ckpt / METHOD_DIR
    root.mkdir(parents=True, exist_ok=True)
    # clones: safetensors refuses tensors that share memory (tied embeddings of a reference copy)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, root / "state.safetensors")
    (root / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k not in tensors}))
    for name, (module, optimizer, scheduler) in owned.items():
        weights = unwrap(module).state_dict()
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}, root / f"{name}.safetensors")
        if optimizers:
            torch.save(optimizer.state_dict(), root / f"{name}.optimizer.pt")
        torch.save(scheduler.state_dict(), root / f"{name}.scheduler.pt")


def load_method_state(ckpt: Path, method, owned: dict, unwrap) -> None:
    """Read back what `save_method_state` wrote (weights_only for every torch file)."""
    from safetensors.torch import load_file

    root = ckpt / METHOD_DIR
    if not root.is_dir():
        if owned:
            raise RuntimeError(f"{ckpt}: no {METHOD_DIR}/ state for the method's modules {', '.join(owned)}")
        return
    state = json.loads((root / "state.json").read_text())
    state.update(load_file(root / "state.safetensors"))
    method.load_state_dict(state)
    for name, (module, optimizer, scheduler) in owned.items():
        unwrap(module).load_state_dict(load_file(root / f"{name}.safetensors"))
        if (root / f"{name}.optimizer.pt").is_file():  # else accelerate's state holds it
            optimizer.load_state_dict(torch.load(root / f"{name}.optimizer.pt", weights_only=True, map_location="cpu"))
        scheduler.load_state_dict(torch.load(root / f"{name}.scheduler.pt", weights_only=True))


def load_training_state(ckpt: Path, *, accelerator, optimizer, scheduler) -> dict:
    """Optimizers, schedules and RNG streams of a checkpoint: through accelerate's `load_state`
    (weights_only) for checkpoints it wrote, else from the files of earlier versions."""
    if (ckpt / ACCELERATE).is_dir():
        accelerator.load_state(str(ckpt / ACCELERATE))
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
        return json.loads((ckpt / "state.json").read_text())
    return _load_training_state_v1(ckpt, rank=accelerator.process_index, optimizer=optimizer, scheduler=scheduler)


def _load_training_state_v1(ckpt: Path, *, rank: int, optimizer, scheduler) -> dict:
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng_file = ckpt / f"rng-{rank}.json"
    if rng_file.is_file():
        set_rng_state(json.loads(rng_file.read_text()))
    return json.loads((ckpt / "state.json").read_text())

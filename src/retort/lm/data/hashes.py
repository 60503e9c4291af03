"""Identities of models and tokenizers: what a trace set records of the teacher that made it, and
what later commands check (the same weights for mixed-policy rows, the same vocabulary for reusing
sampled token ids)."""

from __future__ import annotations

import hashlib
import json


def weights_sha256(model) -> str:
    """Hash of every parameter and buffer (names, dtypes, bytes): identifies the teacher exactly."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_sha256(tok) -> str:
    return hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()

"""Text pieces shared by methods and curation: the lossless sentence split of a completion
(Skip-Thinking's chunks, DASD's Teacher / Student Sentences)."""

from __future__ import annotations

import re

_SENT = re.compile(r"[^\n]*?(?:[.!?](?= )\s*|\n|$)")


def sentences(text: str) -> list[str]:
    """Lines, and sentences within lines; concatenating them gives `text` back."""
    out = [m.group(0) for m in _SENT.finditer(text) if m.group(0)]
    if "".join(out) != text:  # an invariant the chunk examples rely on
        raise ValueError(f"sentence split lost text: {text!r}")
    return out

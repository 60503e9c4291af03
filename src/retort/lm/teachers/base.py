"""The Teacher interface: what a method may ask of a teacher (`CAPABILITIES`), whatever the teacher is.
The kinds of teacher are `local` (a model in this process), `store` (a trace set's stored
log-probs) and `api` (a server); `registry` picks one by `teacher.name`."""

from __future__ import annotations

from typing import Optional

CAPABILITIES = ("generate", "score", "hidden", "score_stored")


class Teacher:
    """What methods use of a teacher. `capabilities` says which calls work (`CAPABILITIES`)."""

    kind = "teacher"
    capabilities: frozenset = frozenset()
    max_topk: Optional[int] = None  # the most top-k entries `score` can give per position (None: any)

    def __init__(self, name: str, tokenizer=None):
        self.name, self.tokenizer = name, tokenizer

    def identity(self) -> str:
        """What identifies this teacher exactly (recorded in trace manifests, checked on reuse)."""
        return self.name

    def generate(self, prompts: list[str], **kw) -> list:
        """`num_samples` completions (text, token ids, finish reason; with `scores=K` the teacher's
        log-probs and top-K at each sampled token) of each prompt; see `retort.lm.rollout.generate`."""
        raise NotImplementedError(self._lacks("generate"))

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], *, topk: int = 0) -> list:
        raise NotImplementedError(self._lacks("score"))

    def hidden(self, batch) -> "tuple[torch.Tensor, torch.Tensor]":  # noqa: F821 (torch: lazily, a server needs none)
        raise NotImplementedError(self._lacks("hidden"))

    def _lacks(self, what: str) -> str:
        return f"teacher {self.name} ({self.kind}) cannot {what}"


__all__ = ["CAPABILITIES", "Teacher"]

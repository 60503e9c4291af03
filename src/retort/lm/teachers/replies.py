"""What goes to an OpenAI-compatible server and what comes back, free of the network: a request
(`Job`, with its X-Request-ID `request_id` and seed `request_seed`), and an answer parsed into a
`Reply` (`parse_chat` for `/chat/completions`, `parse_completion` for `/completions`): its text, a
reasoning server's `reasoning_content` apart, the finish reason, the token strings with their
log-probs and `top_logprobs` when asked, and the server's token usage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Optional

from .http import Malformed
from .tokens import Tok


@dataclass
class Reply:
    text: str
    finish_reason: str
    reasoning: Optional[str] = None
    tokens: Optional[list] = None            # [Tok] when log-probs were asked and given
    prompt_tokens: int = 0                   # the server's usage
    completion_tokens: int = 0
    url: str = ""

    def tokens_json(self) -> Optional[str]:
        """The token strings, log-probs and alternatives as compact JSON (kept whatever the tokenizer)."""
        if self.tokens is None:
            return None
        return json.dumps({"t": [t.text for t in self.tokens], "lp": [t.logprob for t in self.tokens],
                           "top": [[[a.text, a.logprob] for a in t.top] for t in self.tokens]},
                          ensure_ascii=False, separators=(",", ":"))


@dataclass
class Job:
    """One request: `key` names it in the journal, `attempt` counts finish=length retries."""

    key: str
    prompt: str
    seed: int
    attempt: int = 0


def _tok(d: dict) -> Tok:
    b = d.get("bytes")
    return Tok(text=d.get("token") or "", logprob=float(d["logprob"]), bytes=bytes(b) if b is not None else None,
               id=d.get("id") if isinstance(d.get("id"), int) else None)


def parse_chat(d: dict, want_logprobs: bool) -> Reply:
    ch = d["choices"][0]
    msg = ch["message"]
    if ch.get("finish_reason") is None:
        raise Malformed("no finish_reason")
    reply = Reply(text=msg.get("content") or "", finish_reason=ch["finish_reason"],
                  reasoning=msg.get("reasoning_content") or msg.get("reasoning") or None)
    lp = ch.get("logprobs")
    if want_logprobs and lp and lp.get("content") is not None:
        reply.tokens = []
        for t in lp["content"]:
            tok = _tok(t)
            tok.top = [_tok(a) for a in t.get("top_logprobs") or []]
            reply.tokens.append(tok)
    _usage(reply, d)
    return reply


def parse_completion(d: dict, want_logprobs: bool) -> Reply:
    ch = d["choices"][0]
    if ch.get("finish_reason") is None:
        raise Malformed("no finish_reason")
    reply = Reply(text=ch["text"] or "", finish_reason=ch["finish_reason"])
    lp = ch.get("logprobs")
    if want_logprobs and lp and lp.get("tokens") is not None:
        tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
        reply.tokens = [Tok(text=t, logprob=float(v), top=[Tok(text=a, logprob=float(x)) for a, x in (top or {}).items()])
                        for t, v, top in zip(lp["tokens"], lp["token_logprobs"], tops)]
    _usage(reply, d)
    return reply


def _usage(reply: Reply, d: dict) -> None:
    u = d.get("usage") or {}
    reply.prompt_tokens = int(u.get("prompt_tokens") or 0)
    reply.completion_tokens = int(u.get("completion_tokens") or 0)


def request_id(job: "Job") -> str:
    """The X-Request-ID header of a job: a UUID (some servers refuse any other form) derived from
    the job's key and attempt, so a server's log shows which request came back."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"retort:{job.key}:{job.attempt}"))


def request_seed(*parts) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


__all__ = ["Job", "Reply", "parse_chat", "parse_completion", "request_id", "request_seed"]

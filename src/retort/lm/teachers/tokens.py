"""Token strings of an OpenAI-compatible server's answers as ids of a local tokenizer.

A server answers with token *strings* (and usually their bytes). They become ids of a local
tokenizer only when `teacher.api.tokenizer` names the served model's tokenizer and it is checked,
not assumed: every token of every answer must map to exactly one id whose bytes are the token's,
the ids together spelling the answer's text (`TokenMap`); `ApiTeacher.check_tokenizer` also
compares the server's `/tokenize` of a probe text with the local ids. `server_tokenizer` loads
that tokenizer (a directory holding just a tokenizer, or anything a model name can be).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Optional

from ..data.align import byte_decoder


@dataclass
class Tok:
    """One token of a server's answer: its text, bytes (when the server gives them), id (when the
    server gives it), log-prob, and the alternatives the server listed (`top_logprobs`), as Toks."""

    text: str
    logprob: float
    bytes: Optional[bytes] = None
    id: Optional[int] = None
    top: list = field(default_factory=list)


class TokenMap:
    """Token strings/bytes of a server's answers -> ids of the served model's tokenizer `tok`."""

    def __init__(self, tok):
        self.tok = tok
        spec = json.loads(tok.backend_tokenizer.to_str()) if hasattr(tok, "backend_tokenizer") else {}
        byte_level = "ByteLevel" in json.dumps(spec.get("decoder") or {})
        dec = byte_decoder()
        special = set(tok.all_special_ids)
        self.bytes_of: list[Optional[bytes]] = []
        self.by_bytes: dict[bytes, int] = {}
        ambiguous = set()
        for i, s in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
            if s is None:
                b = None
            elif i in special:
                b = s.encode()
            elif byte_level and all(c in dec for c in s):
                b = bytes(dec[c] for c in s)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", s):
                b = bytes([int(s[3:5], 16)])
            else:
                b = s.replace("\u2581", " ").encode()
            self.bytes_of.append(b)
            if b is not None:
                if b in self.by_bytes and i not in special:
                    ambiguous.add(b)
                self.by_bytes.setdefault(b, i)
        for b in ambiguous:
            self.by_bytes.pop(b, None)

    def id(self, t: Tok) -> Optional[int]:
        """The id of `t`, or None if it maps to none (or to more than one)."""
        if t.text.startswith("token_id:"):  # vLLM's return_tokens_as_token_ids
            try:
                i = int(t.text[9:])
            except ValueError:
                return None
            return i if 0 <= i < len(self.bytes_of) else None
        b = t.bytes if t.bytes is not None else t.text.encode()
        if t.id is not None:
            return t.id if 0 <= t.id < len(self.bytes_of) and self.bytes_of[t.id] == b else None
        return self.by_bytes.get(b)

    def ids(self, reply) -> Optional[list[int]]:
        """The ids of a reply's tokens when every one maps and together they spell its text."""
        if not reply.tokens:
            return [] if reply.tokens is not None and not reply.text else None
        ids = [self.id(t) for t in reply.tokens]
        if any(i is None for i in ids):
            return None
        spelled = b"".join(self.bytes_of[i] for i in ids)
        eos = self.tok.eos_token_id
        if ids and ids[-1] == eos and spelled.endswith(self.bytes_of[eos] or b"\0") and \
                spelled[:-len(self.bytes_of[eos])] == reply.text.encode():
            return ids  # the server listed the end-of-sequence step too
        return ids if spelled == reply.text.encode() else None


def server_tokenizer(name: str):
    """`teacher.api.tokenizer`: a directory holding just a tokenizer (tokenizer.json or
    tokenizer_config.json, no model), or anything a model name can be (`load_tokenizer`)."""
    from pathlib import Path

    from ..config import ModelConfig
    from ...errors import ModelError
    from ..models import load_tokenizer

    p = Path(name)
    if p.is_dir() and not (p / "config.json").is_file() and \
            ((p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file()):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(p))
        except Exception as e:  # a damaged file raises several types
            raise ModelError(f"teacher.api.tokenizer={name}: could not load the tokenizer ({e})") from None
    return load_tokenizer(ModelConfig(name=name))


__all__ = ["Tok", "TokenMap", "server_tokenizer"]

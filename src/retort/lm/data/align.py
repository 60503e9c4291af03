"""Aligning two tokenizers for cross-tokenizer distillation: which tokens the two vocabularies share
(`shared_vocab`, by the text each token spells), where each token of a text ends (`token_ends`), and
the spans of text on which both tokenizations break (`align_spans`), so that each group of student
tokens is matched with the teacher tokens that spell the same characters.

Token strings are compared after undoing each tokenizer's markers (`token_bytes`): byte-level BPE
(GPT-2, Qwen, SmolLM2) writes bytes as printable stand-ins (`Ġ` for a space, `Ċ` for a newline);
SentencePiece writes `▁` for a space and `<0x0A>` for a byte-fallback token. Both become the bytes
they stand for, so `Ġthe`, `▁the` and ` the` are one token.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch



@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: printable stand-in -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _decoder_kinds(tokenizer) -> str:
    """The JSON of the fast tokenizer's decoder (names `ByteLevel`, `ByteFallback`, `Replace`...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    dec = getattr(backend, "decoder", None)
    if dec is None:
        return ""
    try:
        return json.dumps(json.loads(dec.__getstate__()))
    except Exception:  # a decoder without a JSON state: treat its tokens as plain text
        return type(dec).__name__


def token_bytes(tokenizer) -> dict[int, bytes]:
    """id -> the bytes the token spells (special tokens: their own name, so they match only a
    special token of the same name)."""
    kinds = _decoder_kinds(tokenizer)
    byte_level = "ByteLevel" in kinds
    fallback = "ByteFallback" in kinds
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = byte_decoder()
    out = {}
    for tok, i in tokenizer.get_vocab().items():
        if tok in specials:
            out[i] = b"\x00special:" + tok.encode()
        elif byte_level and all(c in decoder for c in tok):
            out[i] = bytes(decoder[c] for c in tok)
        elif fallback and len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            out[i] = bytes([int(tok[3:5], 16)])
        else:
            out[i] = tok.replace("▁", " ").encode("utf-8")
    return out


def shared_vocab(student_tok, teacher_tok) -> torch.Tensor:
    """(M, 2) long: rows of (student id, teacher id) spelling the same bytes, within both
    tokenizers' sizes, and the two EOS tokens (whatever their names). One pair per text (the lowest
    ids, should a tokenizer spell a text twice)."""
    s_size, t_size = len(student_tok), len(teacher_tok)
    by_text: dict[bytes, int] = {}
    for i, b in sorted(token_bytes(teacher_tok).items(), reverse=True):
        if i < t_size:
            by_text[b] = i
    pairs, seen = [], set()
    for i, b in sorted(token_bytes(student_tok).items()):
        if i < s_size and b in by_text and b not in seen:
            seen.add(b)
            pairs.append((i, by_text[b]))
    # the two end-of-sequence tokens stand for the same event whatever their names
    s_eos, t_eos = student_tok.eos_token_id, teacher_tok.eos_token_id
    if s_eos is not None and t_eos is not None and all(s != s_eos and t != t_eos for s, t in pairs):
        pairs.append((s_eos, t_eos))
    import torch  # here: an API teacher's traces use this module's byte tables and need no torch

    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def token_ends(tokenizer, ids: list[int], text: str | None = None) -> tuple[str, list[int]]:
    """The text `ids` spell and, for each token, the character offset where it ends in that text.
    A token that ends inside a character (part of a multi-byte character: a byte-fallback token,
    or a byte-level BPE token whose bytes straddle two characters) ends where that character does,
    so it falls in one span with the token that completes it."""
    def decode(part):
        return tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    text = decode(ids) if text is None else text
    ends: list[int | None] = []
    for k in range(1, len(ids) + 1):
        prefix = decode(ids[:k])
        cut = prefix.endswith("\ufffd") and (len(prefix) > len(text) or text[len(prefix) - 1] != "\ufffd")
        ends.append(None if cut else min(len(prefix), len(text)))
    out, nxt = [0] * len(ids), len(text)
    for k in range(len(ids) - 1, -1, -1):  # an unfinished character ends with the token finishing it
        nxt = min(nxt, ends[k]) if ends[k] is not None else nxt
        out[k] = nxt
    last = 0
    for k, e in enumerate(out):
        last = out[k] = max(last, e)
    if out:
        out[-1] = len(text)
    return text, out


def encode_with_ends(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """The tokenizer's ids of `text` (no special tokens) and where each ends, from its offset
    mapping (a fast tokenizer), else by decoding prefixes (`token_ends`)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ends, last = [], 0
        for _, end in enc["offset_mapping"]:
            last = max(last, end)
            ends.append(last)
        if ends:
            ends[-1] = len(text)
        return list(enc["input_ids"]), ends
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids, token_ends(tokenizer, ids, text)[1]


def align_spans(student_ends: list[int], teacher_ends: list[int]) -> list[tuple[range, range]]:
    """Spans of text both tokenizations end on: for each, the student tokens and the teacher tokens
    that spell it (runs merged until both sides cover the same characters). Both `ends` are
    non-decreasing character offsets into the same text, each list ending at its length."""
    common = sorted(set(student_ends) & set(teacher_ends))
    spans, i, j = [], 0, 0
    for b in common:
        i2, j2 = i, j
        while i2 < len(student_ends) and student_ends[i2] <= b:
            i2 += 1
        while j2 < len(teacher_ends) and teacher_ends[j2] <= b:
            j2 += 1
        if i2 > i and j2 > j:
            spans.append((range(i, i2), range(j, j2)))
            i, j = i2, j2
    return spans


__all__ = ["align_spans", "encode_with_ends", "shared_vocab", "token_bytes", "token_ends"]

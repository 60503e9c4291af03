"""Compact storage of a teacher's top-k next-token distributions (offline KD), one blob per trace row.

At each position the teacher's k most likely token ids, their log-probs, and the log of the mass
outside them (the tail) are kept. The blob of a row with P positions holds, in order:

  header     version byte (1), k (varint), P (varint)
  tails      P x uint16 little-endian: round(-log(tail mass) * 2048); 65535 = no tail (k >= V, or
             mass below e^-32)
  codes      P x k bytes, in id order: round(16 * (top log-prob - log-prob)), at most 255 — log-probs
             relative to the position's most likely token in steps of 1/16 nat (an entry more than
             16 nats below the top, p < 1.1e-7 of it, is stored at that floor)
  ids        P x k varints: each position's ids sorted ascending, as gaps (the first from 0); a gap
             below 128 is one byte, below 16384 two

Decoding puts the top-k mass back at exactly 1 - tail: log p_i = -code_i / 16 - logsumexp(-codes / 16)
+ log(1 - tail), so the most likely token's log-prob needs no storage. Parquet's zstd then
compresses the blob column (ids of frequent tokens repeat across positions).

What it costs and loses, measured on SmolLM2-135M (V = 49152, k = 64; benchmarks/topk_storage.py):
about 130 bytes per position on disk, against 256 for uint32 ids + float16 log-probs before
compression; the quantisation adds about 6e-5 nats of KL to what truncation to k entries costs.
"""

from __future__ import annotations

import numpy as np

VERSION = 1
CODE_STEP = 16.0     # codes per nat (log-prob relative to the position's top)
TAIL_STEP = 2048.0   # codes per nat (log of the tail mass)
NO_TAIL = 65535


def _varint(values: np.ndarray) -> bytes:
    v = values.astype(np.uint64).ravel()
    n = np.ones(v.shape, dtype=np.int64)
    for bits in (7, 14, 21, 28, 35):
        n += v >= (1 << bits)
    rep = np.repeat(v, n)
    starts = np.cumsum(n) - n
    j = np.arange(rep.size) - np.repeat(starts, n)
    more = (j < np.repeat(n, n) - 1).astype(np.uint64) << np.uint64(7)
    return (((rep >> (7 * j).astype(np.uint64)) & np.uint64(127)) | more).astype(np.uint8).tobytes()


def _unvarint(buf: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """The first `count` varints of buf, and the number of bytes they took."""
    ends = np.flatnonzero(buf < 128)[:count]
    if ends.size < count:
        raise ValueError("top-k blob is truncated")
    used = int(ends[-1]) + 1 if count else 0
    b = buf[:used].astype(np.uint64)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    group = np.repeat(np.arange(count), lengths)
    j = np.arange(used) - np.repeat(starts, lengths)
    parts = (b & np.uint64(127)) << (7 * j).astype(np.uint64)
    out = np.zeros(count, dtype=np.uint64)
    np.add.at(out, group, parts)
    return out.astype(np.int64), used


def encode(ids, logprobs, tail_logprobs) -> bytes:
    """ids (P, k) ints, logprobs (P, k) the teacher's log-probs of those ids, tail_logprobs (P,)
    log of the mass outside them (-inf when none). Ids of a position must be distinct."""
    ids = np.asarray(ids, dtype=np.int64)
    lps = np.asarray(logprobs, dtype=np.float64)
    tails = np.asarray(tail_logprobs, dtype=np.float64)
    if ids.ndim != 2 or lps.shape != ids.shape or tails.shape != ids.shape[:1]:
        raise ValueError(f"expected ids and logprobs (P, k) and tails (P,), "
                         f"got {ids.shape}, {lps.shape}, {tails.shape}")
    p, k = ids.shape
    head = bytes([VERSION]) + _varint(np.array([k, p]))
    if p == 0:
        return head
    order = np.argsort(ids, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, 1)
    lps = np.take_along_axis(lps, order, 1)
    if k > 1 and (np.diff(ids, axis=1) == 0).any():
        raise ValueError("top-k ids repeat within a position")
    codes = np.clip(np.rint((lps.max(1, keepdims=True) - lps) * CODE_STEP), 0, 255).astype(np.uint8)
    with np.errstate(invalid="ignore"):
        t = np.rint(-tails * TAIL_STEP)
    t = np.where(np.isfinite(t) & (t < NO_TAIL), np.maximum(t, 0), NO_TAIL).astype("<u2")
    gaps = np.diff(ids, axis=1, prepend=0)
    return head + t.tobytes() + codes.tobytes() + _varint(gaps)


def decode(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(ids (P, k) int64, sorted ascending per position; log-probs (P, k) float32)."""
    buf = np.frombuffer(blob, dtype=np.uint8)
    if buf.size == 0 or buf[0] != VERSION:
        raise ValueError(f"not a retort top-k blob of version {VERSION}")
    (k, p), used = _unvarint(buf[1:], 2)
    at = 1 + used
    if p == 0:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    t = np.frombuffer(blob, dtype="<u2", count=p, offset=at).astype(np.float64)
    at += 2 * p
    codes = np.frombuffer(blob, dtype=np.uint8, count=p * k, offset=at).reshape(p, k).astype(np.float64)
    at += p * k
    gaps, _ = _unvarint(buf[at:], p * k)
    ids = np.cumsum(gaps.reshape(p, k), axis=1)
    rel = -codes / CODE_STEP
    lse = np.log(np.exp(rel).sum(1, keepdims=True))
    tail = np.where(t == NO_TAIL, 0.0, np.exp(-t / TAIL_STEP))
    top_mass = np.log1p(-np.minimum(tail, 1 - 1e-6))[:, None]
    return ids, (rel - lse + top_mass).astype(np.float32)


__all__ = ["decode", "encode"]


def encode_scores(scores, k: int) -> bytes:
    """`encode` of a rollout's `Scores` (flat top-k ids and log-probs, k per position, and tails)."""
    return encode(np.asarray(scores.topk_ids, dtype=np.int64).reshape(-1, k),
                  np.asarray(scores.topk_logprobs, dtype=np.float64).reshape(-1, k), scores.topk_tail)

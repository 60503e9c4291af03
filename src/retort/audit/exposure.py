"""Canary exposure (Carlini et al. 2019, "The Secret Sharer", arXiv:1802.08232, §4).

A canary is a format with one slot, `{secret}`, filled from a known candidate space R (every string
of `length` symbols of `alphabet`, so |R| = len(alphabet) ** length). The model ranks every
candidate by its log-perplexity (the negative log-probability of the whole filled-in text, in
nats; lower is more likely), and

    exposure(s) = log2 |R| - log2 rank(s)

where rank(s) = 1 + the number of candidates strictly more likely than the true secret s (ties
go to the secret: a model that cannot tell s apart gets no credit for it). A memorised secret
ranks first (exposure log2 |R|, the maximum); one the model never saw ranks near the middle
(exposure about 1 bit on average, log2 e = 1.44 in expectation over a uniform rank).

Exact by default: every candidate is scored (`exact_ranks`), one sweep serving every canary of
the same format. Past `max_exact` candidates (10**6 by default; 6 decimal digits) the paper's
estimator is used instead: a skew-normal fitted to the log-perplexities of `n_samples` candidates
drawn uniformly, exposure = -log2 P(X <= log-perplexity of s) (§4.3, "Approximating exposure via
distribution modeling")."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

SLOT = "{secret}"
DIGITS = "0123456789"
MAX_EXACT = 10 ** 6


@dataclass(frozen=True)
class CanaryFormat:
    """`format`: text with one `{secret}` slot; the secret: `length` symbols of `alphabet`."""

    format: str
    length: int
    alphabet: str = DIGITS

    def __post_init__(self):
        if self.format.count(SLOT) != 1:
            found = self.format.count(SLOT)
            raise ConfigError(f"canary format {self.format!r}: expected exactly one {SLOT} slot, found {found}")
        if "{" in self.format.replace(SLOT, "") or "}" in self.format.replace(SLOT, ""):
            raise ConfigError(f"canary format {self.format!r}: braces other than the {SLOT} slot")
        if not isinstance(self.length, int) or self.length < 1:
            raise ConfigError(f"canary length={self.length!r}: expected a whole number of symbols >= 1")
        if len(self.alphabet) < 2 or len(set(self.alphabet)) != len(self.alphabet):
            raise ConfigError(f"canary alphabet {self.alphabet!r}: expected two or more distinct symbols")

    @property
    def size(self) -> int:
        """|R|: how many secrets the space holds."""
        return len(self.alphabet) ** self.length

    def secret(self, index: int) -> str:
        """The candidate with this index (0 .. size-1): its digits in base len(alphabet)."""
        base, out = len(self.alphabet), []
        for _ in range(self.length):
            index, r = divmod(index, base)
            out.append(self.alphabet[r])
        return "".join(reversed(out))

    def index(self, secret: str) -> int:
        self.check(secret)
        base, i = len(self.alphabet), 0
        for ch in secret:
            i = i * base + self.alphabet.index(ch)
        return i

    def check(self, secret: str) -> None:
        if len(secret) != self.length or any(ch not in self.alphabet for ch in secret):
            raise ConfigError(f"canary secret {secret!r}: expected {self.length} symbols of {self.alphabet!r}")

    def text(self, secret: str) -> str:
        return self.format.replace(SLOT, secret)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[list[str]]:
        """The candidates' texts in index order, `batch_size` at a time."""
        stop = self.size if stop is None else stop
        for lo in range(start, stop, batch_size):
            yield [self.text(self.secret(i)) for i in range(lo, min(lo + batch_size, stop))]


def exposure_from_rank(rank: int, size: int) -> float:
    return math.log2(size) - math.log2(rank)


def exact_ranks(fmt: CanaryFormat, secrets: Sequence[str], log_perplexity: Callable[[list[str]], Sequence[float]],
                *, batch_size: int = 256, progress: Callable[[int], None] | None = None) -> dict[str, dict]:
    """Score every candidate of `fmt` once (`log_perplexity(texts) -> one value per text`), then
    rank each secret among all of them: secret -> {rank, ties, log_perplexity, exposure}."""
    for s in secrets:
        fmt.check(s)
    scores = np.empty(fmt.size, dtype=np.float64)
    done = 0
    for texts in fmt.batches(batch_size):
        values = np.asarray(log_perplexity(texts), dtype=np.float64)
        if values.shape != (len(texts),):
            raise ValueError(f"log_perplexity returned shape {values.shape} for {len(texts)} texts")
        scores[done:done + len(texts)] = values
        done += len(texts)
        if progress is not None:
            progress(done)
    out = {}
    for s in secrets:
        own = scores[fmt.index(s)]
        rank = 1 + int((scores < own).sum())
        out[s] = {"rank": rank, "ties": int((scores == own).sum()) - 1, "log_perplexity": float(own),
                  "exposure": exposure_from_rank(rank, fmt.size), "method": "exact"}
    return out


def estimated_exposure(fmt: CanaryFormat, secrets: Sequence[str],
                       log_perplexity: Callable[[list[str]], Sequence[float]], *, n_samples: int = 10 ** 5,
                       seed: int = 0, batch_size: int = 256) -> dict[str, dict]:
    """Carlini et al.'s estimate for spaces too large to enumerate: a skew-normal fitted to the
    log-perplexities of `n_samples` uniformly drawn candidates; exposure = -log2 CDF(the secret's).
    `rank` is the estimated one (|R| * CDF, at least 1)."""
    from scipy.stats import skewnorm

    for s in secrets:
        fmt.check(s)
    rng = np.random.default_rng(seed)
    # uniform indices over [0, size): drawn digit by digit, so spaces past 2**63 work too
    digits = rng.integers(0, len(fmt.alphabet), size=(n_samples, fmt.length))
    texts = [fmt.text("".join(fmt.alphabet[d] for d in row)) for row in digits]
    sample = np.concatenate([np.asarray(log_perplexity(texts[i:i + batch_size]), dtype=np.float64)
                             for i in range(0, len(texts), batch_size)])
    a, loc, scale = skewnorm.fit(sample)
    own = np.asarray(log_perplexity([fmt.text(s) for s in secrets]), dtype=np.float64)
    out = {}
    for s, v in zip(secrets, own):
        log_cdf = float(skewnorm.logcdf(v, a, loc, scale))
        exposure = min(-log_cdf / math.log(2), math.log2(fmt.size))
        out[s] = {"rank": max(1.0, fmt.size * math.exp(log_cdf)), "log_perplexity": float(v),
                  "exposure": exposure, "method": "skewnorm", "n_samples": n_samples,
                  "sample_rank": 1 + int((sample < v).sum()),  # the rank among the drawn candidates
                  "fit": {"a": float(a), "loc": float(loc), "scale": float(scale)}}
    return out


def exposures(fmt: CanaryFormat, secrets: Sequence[str], log_perplexity, *, max_exact: int = MAX_EXACT,
              n_samples: int = 10 ** 5, seed: int = 0, batch_size: int = 256, progress=None) -> dict[str, dict]:
    """Exact ranks up to `max_exact` candidates, the skew-normal estimate past it."""
    if fmt.size <= max_exact:
        return exact_ranks(fmt, secrets, log_perplexity, batch_size=batch_size, progress=progress)
    return estimated_exposure(fmt, secrets, log_perplexity, n_samples=n_samples, seed=seed, batch_size=batch_size)

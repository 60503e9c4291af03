"""Requests to OpenAI-compatible servers: many at once, within limits, retried, tallied.

`Pool` is one asyncio HTTP client (aiohttp: at 64 requests in flight it keeps up with a server
where httpx's async client, measured side by side, took 7x as long) over one or more base URLs.
Each request:
- waits for a slot (at most `max_in_flight` open over all URLs) and for the requests-per-minute and
  tokens-per-minute budgets (token buckets holding ten seconds' worth; a request's tokens are
  estimated up front and settled with the server's `usage` when it answers);
- goes to the URL with the fewest requests open (`least_loaded`) or the next in turn (`round_robin`),
  skipping a URL that just failed to connect until its cool-down ends;
- is retried, with exponential backoff and jitter (a `Retry-After` header wins), after a 408, 429 or
  5xx status, a timeout, a lost connection or a body that is not what the caller's `parse` accepts;
  any other status (400, 401, 404, ...) is final for that request.
Every failed attempt is counted by kind (`errors`), for the one summary at the end of a run.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from typing import Callable, Optional

from ...errors import ApiError, ConfigError

RETRIED_STATUS = {408, 409, 425, 429}  # and every 5xx
BACKOFF_CAP_S = 60.0


class Malformed(ValueError):
    """A 200 response whose body is not what the request asked for (retried)."""


class Failed(ApiError):
    """One request failed for good: `kind` (e.g. "http 400", "timeout"), `detail` the server's words."""

    def __init__(self, kind: str, detail: str, *, final: bool = False):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.final = kind, detail, final


class Bucket:
    """A token bucket refilled at `per_minute` / 60 per second, holding ten seconds' worth (at least
    one request's amount, so an outsized request can pass once the bucket is full)."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = per_minute / 6.0
        self.level, self.t = self.capacity, time.monotonic()

    def _refill(self, cap: float) -> None:
        now = time.monotonic()
        self.level = min(cap, self.level + (now - self.t) * self.rate)
        self.t = now

    async def take(self, amount: float) -> None:
        cap = max(self.capacity, amount)
        while True:
            self._refill(cap)
            if self.level >= amount:
                self.level -= amount
                return
            await asyncio.sleep(min(5.0, (amount - self.level) / self.rate))

    def give(self, amount: float) -> None:
        """Settle an estimate: a positive `amount` returns tokens, a negative one takes more (debt)."""
        self.level = min(self.capacity, self.level + amount)


class Pool:
    def __init__(self, urls: list[str], *, key: Optional[str] = None, max_in_flight: int = 64, rpm: float = 0.0,
                 tpm: float = 0.0, timeout_s: float = 600.0, max_retries: int = 6, backoff_s: float = 1.0,
                 balance: str = "least_loaded", seed: int = 0):
        if not urls:
            raise ConfigError("teacher.api.base_url: no URL given")
        for u in urls:
            if not u.startswith(("http://", "https://")):
                raise ConfigError(f"teacher.api.base_url: {u!r} is not an http:// or https:// URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.key, self.max_in_flight, self.timeout_s = key, max_in_flight, timeout_s
        self.max_retries, self.backoff_s, self.balance = max_retries, backoff_s, balance
        self.rpm, self.tpm = (Bucket(rpm) if rpm else None), (Bucket(tpm) if tpm else None)
        self.open = {u: 0 for u in self.urls}          # requests in flight per URL
        self.down_until = {u: 0.0 for u in self.urls}  # connection failures: skip the URL until then
        self.sent = Counter()                          # attempts per URL
        self.errors: Counter = Counter()               # failed attempts by kind
        self.requests = 0                              # attempts, all URLs
        self._turn = 0
        self._rng = random.Random(seed)
        self._client = None
        self._slots: Optional[asyncio.Semaphore] = None

    async def __aenter__(self):
        import aiohttp

        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        timeout = aiohttp.ClientTimeout(total=self.timeout_s, connect=min(30.0, self.timeout_s))
        self._client = aiohttp.ClientSession(timeout=timeout, headers=headers,
                                             connector=aiohttp.TCPConnector(limit=self.max_in_flight))
        self._slots = asyncio.Semaphore(self.max_in_flight)
        return self

    async def __aexit__(self, *exc):
        await self._client.close()

    def _pick(self) -> str:
        now = time.monotonic()
        up = [u for u in self.urls if self.down_until[u] <= now] or self.urls
        if self.balance == "round_robin":
            self._turn += 1
            return up[self._turn % len(up)]
        least = min(self.open[u] for u in up)
        return next(u for u in up if self.open[u] == least)

    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        if retry_after:
            try:
                return min(BACKOFF_CAP_S, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(BACKOFF_CAP_S, self.backoff_s * 2 ** attempt)
        return base * (0.5 + self._rng.random() / 2)

    async def probe(self, url: str, body: dict) -> Optional[dict]:
        """POST `body` to `url` once, no retry: its JSON on a 200, else None (no such route, or a
        server that cannot say)."""
        import aiohttp

        try:
            async with self._client.post(url, json=body) as r:
                if r.status != 200:
                    return None
                return json.loads(await r.read())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def post(self, path: str, body: dict, parse: Callable[[dict], object], *, tokens: float = 0.0,
                   request_id: str = "", usage: Callable[[object], float] = lambda _: 0.0,
                   max_retries: Optional[int] = None):
        """POST `body` to `path` until `parse(json)` accepts the answer; returns (parsed, url).
        `tokens` is the estimate charged to the tokens-per-minute budget before sending, settled
        with `usage(parsed)` (the server's count) after."""
        import aiohttp

        headers = {"X-Request-ID": request_id} if request_id else None
        retries = self.max_retries if max_retries is None else max_retries
        for attempt in range(retries + 1):
            retry_after = None
            async with self._slots:
                if self.rpm:
                    await self.rpm.take(1)
                if self.tpm:
                    await self.tpm.take(tokens)
                url = self._pick()
                self.open[url] += 1
                self.sent[url] += 1
                self.requests += 1
                try:
                    async with self._client.post(url + path, json=body, headers=headers) as r:
                        status = r.status
                        text = (await r.read()).decode("utf-8", errors="replace")
                        retry_after = r.headers.get("Retry-After")
                except TimeoutError as e:  # aiohttp's timeouts are TimeoutErrors
                    status, kind, detail = None, "timeout", f"{url}{path}: no answer in {self.timeout_s:g} s ({type(e).__name__})"
                except aiohttp.ClientError as e:  # refused, reset, closed mid-body
                    status, kind, detail = None, "connection", f"{url}{path}: {type(e).__name__}: {e}"
                    self.down_until[url] = time.monotonic() + min(BACKOFF_CAP_S, self.backoff_s * 2 ** attempt)
                finally:
                    self.open[url] -= 1
            if status == 200:
                try:
                    parsed = parse(json.loads(text))
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    kind, detail = "malformed body", f"{url}{path}: {type(e).__name__}: {e} (body: {text[:200]!r})"
                else:
                    if self.tpm:
                        self.tpm.give(tokens - usage(parsed))
                    return parsed, url
            elif status is not None:
                kind, detail = f"http {status}", f"{url}{path}: {text[:300].strip() or '(empty body)'}"
                if not (status in RETRIED_STATUS or status >= 500):
                    self.errors[kind] += 1
                    raise Failed(kind, detail, final=True)
            self.errors[kind] += 1
            if attempt == retries:
                raise Failed(kind, detail + f" (after {retries} retries)")
            await asyncio.sleep(self._delay(attempt, retry_after))
        raise AssertionError("unreachable")


def summary(errors: Counter) -> str:
    """One line: failed attempts by kind, most frequent first."""
    return ", ".join(f"{n} x {kind}" for kind, n in errors.most_common()) or "none"


__all__ = ["Bucket", "Failed", "Malformed", "Pool", "summary"]

"""Progress lines for output that is not a terminal (a log file, `| cat`, CI): `traces`, `train`
and `eval` each print one line every `every_s` seconds or `every_pct` percent of the work,
whichever comes first, and one at the end, all alike:

    traces: 48/120 prompts (40%), 2.31 prompts/s, eta 0:00:31 | 96 rows, 412 tok/s

On a terminal the commands draw a rich progress bar instead, and this prints nothing.
The rate counts only the work done since this command started (a resumed run's earlier work is
in done/total, not in the rate), so the time left is this command's."""

from __future__ import annotations

import time
from typing import Callable, Optional

EVERY_S = 30.0  # at most this many seconds between two lines
EVERY_PCT = 10.0  # and a line at each such step of the work


def fmt_eta(seconds: float) -> str:
    """h:mm:ss, or "?" before there is a rate to go by."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressLines:
    """`update(done, extra)` prints "LABEL: done/total UNIT (pct%), rate UNIT/s, eta h:mm:ss | extra"
    when a line is due (`EVERY_S` seconds since the last, the next `EVERY_PCT` step crossed, or
    the end reached); nothing without a console or on a terminal (`enabled`)."""

    def __init__(self, console, label: str, total: int, unit: str, *, done: int = 0,
                 every_s: float = EVERY_S, every_pct: float = EVERY_PCT,
                 clock: Callable[[], float] = time.monotonic, enabled: Optional[bool] = None):
        self.console, self.label, self.total, self.unit = console, label, max(0, int(total)), unit
        self.every_s, self.every_pct, self.clock = every_s, every_pct, clock
        self.enabled = (console is not None and not console.is_terminal) if enabled is None else enabled
        self.done = self.start = int(done)
        self.t0 = self.last_t = clock()
        self.last_step = self._step(self.done)
        self.lines: list[str] = []  # what was printed (tests read it)

    def _step(self, done: int) -> int:
        return int(100.0 * done / self.total // self.every_pct) if self.total else 0

    def advance(self, n: int, extra: str = "") -> None:
        self.update(self.done + n, extra)

    def update(self, done: int, extra: str = "") -> None:
        self.done = int(done)
        if not self.enabled:
            return
        now = self.clock()
        step = self._step(self.done)
        end = self.total and self.done >= self.total
        if not (end or step > self.last_step or now - self.last_t >= self.every_s):
            return
        self.last_t, self.last_step = now, step
        self.emit(extra, now)

    def emit(self, extra: str = "", now: Optional[float] = None) -> str:
        """Print the line now (due or not) and return it."""
        now = self.clock() if now is None else now
        elapsed = now - self.t0
        rate = (self.done - self.start) / elapsed if elapsed > 0 else float("nan")
        left = (self.total - self.done) / rate if rate and rate == rate else float("nan")
        pct = f" ({100.0 * self.done / self.total:.0f}%)" if self.total else ""
        rate_s = f"{rate:.3g} {self.unit}/s" if rate == rate else f"? {self.unit}/s"
        line = (f"{self.label}: {self.done}/{self.total} {self.unit}{pct}, {rate_s}, "
                f"eta {fmt_eta(0.0 if self.done >= self.total else left)}" + (f" | {extra}" if extra else ""))
        self.lines.append(line)
        if self.console is not None:
            self.console.print(line, soft_wrap=True, highlight=False)
        return line


__all__ = ["EVERY_PCT", "EVERY_S", "ProgressLines", "fmt_eta"]

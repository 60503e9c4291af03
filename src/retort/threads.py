"""CPU threads: the `threads` setting of every command, and the automatic choice behind its default.

A small model's training step or decode step is many tiny ops; on a CPU, waking a second OpenMP
thread for each costs more than it saves, and on a machine that is busy with another job torch's
default (one thread per core) can make a step several times slower than one thread. `threads=0`
(the default) decides by the work per op, as the fast decode engine does: one thread while
parameters x rows per batch stay under `ONE_THREAD_BELOW`, torch's default above. `threads=N` pins N
for the whole command, and the rollout engines then leave it alone.
"""

from __future__ import annotations

from typing import Optional

# parameters x rows (tokens per training micro-batch, sequences per decode step) below which one
# thread is faster on a CPU (the fast engine's measured threshold; benchmarks/threads.py for training)
ONE_THREAD_BELOW = 50_000_000

_pinned: Optional[int] = None


def pin(threads: int) -> None:
    """Apply a command's `threads` setting: N > 0 pins N threads; 0 leaves the choice to `auto`."""
    global _pinned
    if threads > 0:
        import torch  # here, not at import: commands that need no torch (an API teacher's traces) skip it

        torch.set_num_threads(threads)
        _pinned = threads
    else:
        _pinned = None


def pinned() -> Optional[int]:
    """The thread count the user pinned, or None when retort chooses."""
    return _pinned


def auto(n_params: int, rows: int, device_type: str = "cpu") -> Optional[int]:
    """The thread count for ops over `n_params` parameters and `rows` rows at a time: 1 when they
    are small on a CPU, None for torch's default. A pinned setting wins."""
    if _pinned is not None or device_type != "cpu":
        return _pinned
    return 1 if n_params * rows < ONE_THREAD_BELOW else None

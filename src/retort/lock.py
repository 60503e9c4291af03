"""One writer per output: a command that writes a directory (a run, a trace set, a curated set, a
cached teacher, a demo) holds an exclusive lock on it for as long as it runs.

The lock is `flock` on a file inside the directory (`paths.LOCK_FILE`), so the operating system
releases it however the holder ends, `kill -9` included. The holder writes its PID, host and start
time into that file; a second writer is refused at once with one line naming the directory and the
holder. Readers (`retort eval`, `retort report`, `retort curate --stats`) take no lock and are never
blocked.

The file is removed when the lock is released, and so is a directory the lock had to create if the
command left it empty: a finished or failed command leaves nothing of it behind. A writer killed with
-9 leaves the file, unlocked; the next writer takes it over, and every check of what a directory
holds ignores it (`paths.entries`). Holding one directory again in the same process (the demo's
teacher, trained by `train` inside `ensure_teacher`) nests instead of refusing itself. POSIX only
(`fcntl`); on Linux NFS clients `flock` becomes a lock the server keeps, so writers on two hosts
sharing the directory exclude each other too.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RetortError
from .paths import LOCK_FILE, output_dir


class Busy(RetortError):
    """Another process is writing the directory (it holds the directory's lock)."""


_held: dict[tuple[int, int], list] = {}  # (st_dev, st_ino) of a directory -> [fd of its lock file, depth]
_guard = threading.Lock()


@contextmanager
def hold(path, option: str = "out") -> Iterator[Path]:
    """Hold the lock of output directory `path` (made if absent) while the block runs; raise `Busy`
    when another process holds it. `option` names `path` in messages, as `paths.output_dir` does."""
    root = output_dir(path, option)
    try:
        made = _make_dirs(root)
    except PermissionError as e:
        raise RetortError(f"{option}={path}: cannot make the directory ({e.strerror}: {e.filename})") from None
    try:
        key = _identity(root)
        with _guard:
            entry = _held.get(key)
            if entry is not None:
                entry[1] += 1
        if entry is None:
            try:
                fd = _acquire(root / LOCK_FILE, f"{option}={path}")
            except PermissionError as e:
                raise RetortError(f"{option}={path}: cannot write in it ({e.strerror})") from None
            entry = [fd, 1]
            with _guard:
                _held[key] = entry
        try:
            yield root
        finally:
            with _guard:
                entry[1] -= 1
                last = entry[1] == 0
                if last:
                    del _held[key]
            if last:
                _release(root / LOCK_FILE, entry[0])
    finally:
        for d in reversed(made):  # deepest first; one that is not empty stops it
            try:
                d.rmdir()
            except OSError:
                break


def holding(out_of: Callable[..., object], option: str = "out"):
    """Decorator: the function runs holding the lock of the directory `out_of(*args, **kwargs)`
    names (`hold`), e.g. `@holding(lambda run, *_, **__: run.out)`."""
    def wrap(fn):
        @functools.wraps(fn)
        def locked(*args, **kwargs):
            with hold(out_of(*args, **kwargs), option):
                return fn(*args, **kwargs)
        return locked
    return wrap


def _make_dirs(root: Path) -> list[Path]:
    """Create `root` and its missing parents; the ones made, outermost first."""
    missing = []
    p = root.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    root.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _identity(root: Path) -> tuple[int, int]:
    st = root.stat()
    return st.st_dev, st.st_ino


def _acquire(lock: Path, label: str) -> int:
    for _ in range(10):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the directory was removed by a writer giving up on it: make it again
            lock.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise Busy(f"{label}: another retort command is writing to it ({_holder(lock)}); wait for it to "
                           "end, or choose another directory") from None
            raise RetortError(f"{label}: cannot lock {lock} ({e.strerror}); the file system does not support "
                              "file locks") from None
        try:  # a holder removes the file before releasing it: a file locked after that is no longer the lock
            current = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            current = False
        if current:
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            return fd
        os.close(fd)
    raise Busy(f"{label}: other retort commands keep taking and releasing its lock; run this again")


def _holder(lock: Path) -> str:
    """'PID 123 on HOST, since TIME' from the lock file; the holder writes it just after locking."""
    for _ in range(40):
        try:
            info = json.loads(lock.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) and "pid" in info:
            return f"PID {info['pid']} on {info.get('host', '?')}, since {info.get('since', '?')}"
        time.sleep(0.05)
    return f"a process that has not written its PID and host to {lock}"


def _release(lock: Path, fd: int) -> None:
    try:
        if os.path.samestat(os.fstat(fd), os.stat(lock)):
            lock.unlink()
    except OSError:
        pass
    os.close(fd)  # closing the file releases the lock


__all__ = ["Busy", "hold", "holding"]

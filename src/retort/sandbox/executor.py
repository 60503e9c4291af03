"""Run one Python snippet in a bubblewrap sandbox, with resource limits and a wall-clock timeout.

The mechanism, and why it is enough for model-written code (not for a determined attacker with a
kernel exploit):
- bubblewrap (`bwrap`, the sandbox of Flatpak, well kept) puts the snippet in new pid, network,
  ipc, uts and mount namespaces (and a user namespace when run as a normal user): no network at
  all (its own empty loopback), no view of the host's processes, and a filesystem that holds only
  read-only binds of what the interpreter needs (`/usr`, the Python prefix and the virtual
  environment) plus a fresh tmpfs (`/sandbox`, `Limits.disk_mb`) that is its working directory,
  `$HOME` and `$TMPDIR` and the only writable place. The root is remounted read-only; the project
  directory and the home directory are simply not there. `--die-with-parent` and `--new-session`;
  bwrap sets no_new_privs and mounts binds nosuid, and no capability survives into the snippet.
- A seccomp filter (`seccomp`, x86-64) refuses the system calls that reach the kernel's less
  exercised parts and that a snippet has no use for (ptrace, keyrings, mount and namespace calls,
  BPF, perf, userfaultfd, io_uring, modules).
- Limits set inside the sandbox, before the snippet runs, with `setrlimit` (hard = soft, so the
  snippet cannot raise them): CPU seconds (SIGXCPU, then SIGKILL a second later), address space
  (a 10 GB allocation is a MemoryError), processes (a fork bomb gets EAGAIN), file size and open
  files. A wall-clock timeout SIGKILLs bwrap's process group; bwrap's init then dies and the kernel
  kills every process of the pid namespace, so children that ignore SIGTERM, or outlive the
  snippet, die with it (when the snippet exits, its namespace ends the same way).
- As root (CI containers), the sandbox runs without a user namespace (a root-owned user
  namespace would exempt the snippet from the process limit: the kernel never counts root's
  processes) and the bootstrap drops to uid/gid 65534 (nobody) before running anything, so the
  limits hold. Then the process limit counts every process of uid 65534 on the machine.
- Not prevented: CPU side channels, attacks on the kernel through the system calls that remain
  (file, memory, process and socket calls are all allowed; the filter is a blocklist, and on other
  architectures than x86-64 there is none), reading what the read-only binds hold (the interpreter
  and installed packages), and CPU and memory use within the limits.

Output is read through pipes and truncated to `Limits.output_bytes` per stream (the rest is read
and dropped, so a flood cannot block the snippet on a full pipe and then time out instead).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import RetortError
from . import seccomp

NOBODY = 65534
WORKDIR = "/sandbox"
REFUSAL = "retort never runs code without it"


class SandboxError(RetortError):
    """The sandbox cannot start on this machine (no bwrap, no namespaces): nothing was run."""


@dataclass(frozen=True)
class Limits:
    """What one sandboxed call may use."""

    timeout_s: float = 10.0  # wall clock, then the whole sandbox is SIGKILLed
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 2048  # address space (RLIMIT_AS); numpy's import needs a few hundred MB
    processes: int = 32  # processes and threads of the sandbox's user (RLIMIT_NPROC)
    file_mb: int = 16  # largest file written (RLIMIT_FSIZE)
    disk_mb: int = 64  # the tmpfs working directory
    open_files: int = 256  # RLIMIT_NOFILE
    output_bytes: int = 65536  # kept of stdout and of stderr each

    def rlimits(self) -> dict:
        return {"RLIMIT_CPU": [self.cpu_s, self.cpu_s + 1], "RLIMIT_AS": [self.memory_mb << 20] * 2,
                "RLIMIT_NPROC": [self.processes] * 2, "RLIMIT_FSIZE": [self.file_mb << 20] * 2,
                "RLIMIT_NOFILE": [self.open_files] * 2, "RLIMIT_CORE": [0, 0]}


@dataclass(frozen=True)
class Result:
    """What a sandboxed call gave back. `exit_code`: the snippet's (bwrap's convention: 128+N when
    signal N killed it); `killed_by`: "timeout" (the wall clock), or the signal's name (SIGXCPU: CPU
    limit; SIGKILL: the hard CPU limit or an outside kill), else None; `truncated`: stdout or stderr
    was longer than `Limits.output_bytes`."""

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    killed_by: str | None
    truncated: bool

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


# Runs inside the sandbox as `python -I -u -c BOOT` (isolated: no PYTHON* variables, no user site;
# unbuffered: what was printed before a kill still comes back): reads its request from stdin, drops root, sets
# the limits, replays the session's earlier cells with their output discarded, then runs the snippet.
BOOT = r"""
import json, os, resource, sys
req = json.loads(sys.stdin.buffer.read())
sys.stdin.close()
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
sys.stdin = open(0, closefd=False)
if req["drop"]:
    os.setgroups([]); os.setgid(req["drop"]); os.setuid(req["drop"])
for name, (soft, hard) in req["limits"].items():
    resource.setrlimit(getattr(resource, name), (soft, hard))
del soft, hard, name
g = {"__name__": "__main__", "__builtins__": __builtins__}
def _run(src, name):
    try:
        exec(compile(src, name, "exec"), g)
    except SystemExit:
        raise
    except BaseException as e:
        import traceback  # only on error: its imports would cost every call

        sys.stdout.flush()
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        sys.stderr.flush()
        os._exit(1)
if req["cells"]:
    keep = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1); os.dup2(null, 2)
    for i, cell in enumerate(req["cells"]):
        _run(cell, f"<cell {i}>")
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(keep[0], 1); os.dup2(keep[1], 2)
    os.close(null); os.close(keep[0]); os.close(keep[1])
del req["cells"]
code = req.pop("code")
_run(code, "<snippet>")
"""


def _interpreter() -> Path:
    return Path(sys.executable).absolute()


def _ro_paths() -> list[str]:
    """The host paths bound read-only: /usr, the interpreter's prefixes, and where its executable
    really lives; each once, none inside another."""
    exe = _interpreter()
    want = ["/usr", sys.base_prefix, sys.prefix, str(exe.parent), str(exe.resolve().parent)]
    for extra in ("/etc/ld.so.cache", "/etc/localtime"):
        if Path(extra).exists():
            want.append(extra)
    paths: list[str] = []
    for p in sorted({os.path.abspath(p) for p in want}, key=len):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in paths):
            paths.append(p)
    home = os.path.abspath(Path.home())
    for p in paths:
        if p == "/" or home == p or home.startswith(p.rstrip("/") + "/"):
            # binding it would show the snippet the home directory (keys, tokens), read-only or not
            raise SandboxError(f"the sandbox cannot start: the Python interpreter lives in {p}, which holds the home "
                               f"directory {home}; run retort from a virtual environment or Python installed "
                               f"elsewhere; {REFUSAL}")
    return paths


@functools.lru_cache(maxsize=4)
def _version(bwrap: str) -> tuple:
    """bwrap's version, (0, 8, 0) for "bubblewrap 0.8.0"; () when it does not say."""
    try:
        said = subprocess.run([bwrap, "--version"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", said)
    return tuple(int(x) for x in m.groups() if x is not None) if m else ()


def _as_root() -> bool:
    return os.geteuid() == 0


def command(limits: Limits) -> list[str]:
    """The bwrap command line (the bootstrap reads its request from stdin)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxError(f"the sandbox cannot start: bubblewrap (bwrap) is not installed (apt-get install "
                           f"bubblewrap); {REFUSAL}")
    args = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if _as_root():
        # no user namespace (root's processes are never counted against RLIMIT_NPROC); the bootstrap
        # needs only setuid/setgid to become nobody, after which it holds no capability at all
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        # (the seccomp filter refuses new user namespaces too; --disable-userns is bwrap >= 0.8's)
        args += ["--unshare-user"] + (["--disable-userns"] if _version(bwrap) >= (0, 8) else [])
    made: set[str] = set()
    for path in _ro_paths():
        # parents made world-traversable (bwrap would make them 0700 when root, and the bootstrap
        # runs as nobody)
        for parent in reversed(Path(path).parents):
            p = str(parent)
            if p != "/" and p not in made and p not in ("/usr",):
                made.add(p)
                args += ["--perms", "0755", "--dir", p]
        args += ["--ro-bind", path, path]
    for link in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        host = Path(link)
        if host.is_symlink():
            args += ["--symlink", os.readlink(link), link]
        elif host.is_dir() and link not in made:
            args += ["--ro-bind", link, link]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.disk_mb << 20), "--perms", "1777",
             "--tmpfs", WORKDIR, "--remount-ro", "/", "--chdir", WORKDIR, "--clearenv"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORKDIR, "TMPDIR": WORKDIR, "LANG": "C.UTF-8",
           "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for k, v in env.items():
        args += ["--setenv", k, v]
    return args + ["--", str(_interpreter()), "-I", "-u", "-c", BOOT]


DEFAULT = Limits()


class _Reader(threading.Thread):
    """Reads a pipe to its end, keeping the first `limit` bytes."""

    def __init__(self, pipe, limit: int):
        super().__init__(daemon=True)
        self.pipe, self.limit, self.kept, self.total = pipe, limit, bytearray(), 0

    def run(self):
        while True:
            chunk = self.pipe.read1(65536) if hasattr(self.pipe, "read1") else self.pipe.read(65536)
            if not chunk:
                break
            self.total += len(chunk)
            if len(self.kept) < self.limit:
                self.kept += chunk[:self.limit - len(self.kept)]
        self.pipe.close()

    def text(self) -> str:
        return self.kept.decode("utf-8", errors="replace")


def run(code: str, limits: Limits = DEFAULT, *, cells: tuple = ()) -> Result:
    """Run `code` in a fresh sandbox (module docstring); `cells`, code that ran before in the same
    session, is replayed first with its output discarded. Raises `SandboxError` when the sandbox
    itself cannot start (nothing ran)."""
    if not sys.platform.startswith("linux"):
        raise SandboxError(f"the sandbox cannot start: it needs Linux namespaces (this is {sys.platform}); {REFUSAL}")
    args = command(limits)
    status_r, status_w = os.pipe()
    args[1:1] = ["--json-status-fd", str(status_w)]
    keep = [status_w]
    if seccomp.supported():
        filter_r, filter_w = os.pipe()  # the filter (under 1 KB) fits the pipe: written now, read by bwrap
        os.write(filter_w, seccomp.program())
        os.close(filter_w)
        args[1:1] = ["--seccomp", str(filter_r)]
        keep.append(filter_r)
    request = json.dumps({"code": code, "cells": list(cells), "limits": limits.rlimits(),
                          "drop": NOBODY if _as_root() else 0}).encode()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=tuple(keep), start_new_session=True)
    except OSError as e:
        os.close(status_r)
        raise SandboxError(f"the sandbox cannot start: {e}; {REFUSAL}") from None
    finally:
        for fd in keep:
            os.close(fd)
    out, err = _Reader(proc.stdout, limits.output_bytes), _Reader(proc.stderr, limits.output_bytes)
    status = _Reader(os.fdopen(status_r, "rb"), 1 << 16)
    for reader in (out, err, status):
        reader.start()
    try:
        proc.stdin.write(request)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # bwrap failed before reading: said below
    timed_out = False
    try:
        rc = proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(proc)
        rc = proc.wait()
    finally:
        if proc.returncode is None:  # interrupted (KeyboardInterrupt): nothing may outlive us
            _kill(proc)
            proc.wait()
    for reader in (out, err, status):
        reader.join()
    started = [json.loads(line) for line in status.text().splitlines() if line.strip().startswith("{")]
    init = next((s["child-pid"] for s in started if "child-pid" in s), None)
    if init is None:
        said = err.text().strip().splitlines()
        raise SandboxError(f"the sandbox cannot start: {said[-1] if said else f'bwrap exited with {rc}'}; {REFUSAL}")
    _await_exit(init)
    killed_by = "timeout" if timed_out else None
    if not timed_out and rc > 128:
        try:
            killed_by = signal.Signals(rc - 128).name
        except ValueError:
            pass
    return Result(out.text(), err.text(), rc, timed_out, killed_by,
                  out.total > limits.output_bytes or err.total > limits.output_bytes)


def _await_exit(pid: int, bound_s: float = 10.0) -> None:
    """Wait until the sandbox's init has exited: the kernel kills and reaps every other process
    of its pid namespace before that, so then nothing of the sandbox is left running."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.005)


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_checked: set = set()


def check(limits: Limits = DEFAULT) -> None:
    """Refuse now, in one line (`SandboxError`), when the sandbox cannot start here; a bwrap that
    worked once is not tried again in this process."""
    key = shutil.which("bwrap")
    if key in _checked:
        return
    res = run("print(6 * 7)", limits)
    if res.stdout.strip() != "42":
        raise SandboxError(f"the sandbox cannot start: a trial run printed {res.stdout.strip()[:80]!r} "
                           f"(exit {res.exit_code}; {res.stderr.strip()[-200:]!r}); {REFUSAL}")
    _checked.add(key)


class Session:
    """State across calls, for an agent loop: each call runs in a fresh sandbox after replaying the
    cells that ran without error before it (their output discarded).

    Replay, not a saved state: Python objects (modules, open files, generators) cannot be saved
    without pickle, which retort never loads, and a fresh sandbox per call keeps every call under
    the same limits with nothing left running between calls. The price: each call re-runs the
    earlier cells (their time counts against its limits), and what they do at random or with the
    clock may differ on replay."""

    def __init__(self, limits: Limits = DEFAULT):
        self.limits, self.cells = limits, []

    def run(self, code: str) -> Result:
        res = run(code, self.limits, cells=tuple(self.cells))
        if res.ok:
            self.cells.append(code)
        return res


__all__ = ["Limits", "Result", "SandboxError", "Session", "check", "command", "run"]

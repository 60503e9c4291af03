"""The sandbox's seccomp filter: system calls a snippet has no use for, and that widen the kernel's
attack surface, fail with EPERM (the list follows Docker's default profile where it blocks calls
outright: tracing other processes, kernel keyrings, mounts and namespaces, BPF, perf, userfaultfd,
io_uring, modules, kexec, clocks, swap, reboot; a new user namespace by `clone`, `unshare` or
`setns`, whatever bwrap's version); `clone3` fails with ENOSYS so that the C library
falls back to `clone` (as under Docker). x86-64 only (other architectures run without the filter:
their system call numbers differ); x32 system calls are refused, and a foreign architecture's
calls kill the process.

A classic BPF program (`struct sock_filter` entries) as bwrap's `--seccomp FD` reads it; bwrap
has set no_new_privs, so it needs no privilege."""

from __future__ import annotations

import errno
import platform
import struct

# x86-64 system call numbers (asm/unistd_64.h)
BLOCKED = {
    "ptrace": 101, "syslog": 103, "uselib": 134, "vhangup": 153, "pivot_root": 155, "adjtimex": 159,
    "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
    "reboot": 169, "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179,
    "lookup_dcookie": 212, "clock_settime": 227, "kexec_load": 246, "add_key": 248, "request_key": 249,
    "keyctl": 250, "unshare": 272, "perf_event_open": 298, "fanotify_init": 300, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
}
ENOSYS_CALLS = {"clone3": 435}
CLONE = 56
CLONE_NEWUSER = 0x10000000  # clone() with it would make a user namespace (unshare and setns are blocked)

AUDIT_ARCH_X86_64 = 0xC000003E
X32_BIT = 0x40000000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
RET_ALLOW, RET_KILL_PROCESS, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def supported() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


def program() -> bytes:
    """The filter as bytes (`struct sock_filter[]`, native byte order)."""
    ops = [_op(LD_W_ABS, 4),  # seccomp_data.arch
           _op(JEQ_K, AUDIT_ARCH_X86_64, 1, 0), _op(RET_K, RET_KILL_PROCESS),
           _op(LD_W_ABS, 0),  # seccomp_data.nr
           _op(JGE_K, X32_BIT, 0, 1), _op(RET_K, RET_ERRNO | errno.EPERM),
           # clone(flags, ...) with CLONE_NEWUSER: refused; any other clone (fork, threads) goes on
           _op(JEQ_K, CLONE, 0, 3), _op(LD_W_ABS, 16),  # seccomp_data.args[0], low 32 bits (x86-64)
           _op(JSET_K, CLONE_NEWUSER, 0, 1), _op(RET_K, RET_ERRNO | errno.EPERM),
           _op(LD_W_ABS, 0)]
    for nr in sorted(BLOCKED.values()):
        ops += [_op(JEQ_K, nr, 0, 1), _op(RET_K, RET_ERRNO | errno.EPERM)]
    for nr in ENOSYS_CALLS.values():
        ops += [_op(JEQ_K, nr, 0, 1), _op(RET_K, RET_ERRNO | errno.ENOSYS)]
    ops.append(_op(RET_K, RET_ALLOW))
    return b"".join(ops)


__all__ = ["BLOCKED", "ENOSYS_CALLS", "program", "supported"]

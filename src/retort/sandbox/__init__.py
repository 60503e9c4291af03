"""A sandboxed Python executor: each call runs a snippet in a fresh bubblewrap sandbox (`run`),
with limits (`Limits`), and gives back what it printed, its exit code and whether it was stopped
(`Result`). `Session` keeps state across calls for agent loops by replaying the cells that ran.

What runs inside is this process's own interpreter (`sys.executable`, e.g. the virtual
environment's python, so numpy and sympy are there when installed), read-only, with nothing of the
project, the home directory or the network. Where the sandbox cannot start, `SandboxError` says so
in one line; retort never runs code without it. The mechanism and its limits: `executor`.
"""

from .executor import Limits, Result, SandboxError, Session, check, run

__all__ = ["Limits", "Result", "SandboxError", "Session", "check", "run"]

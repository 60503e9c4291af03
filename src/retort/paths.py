"""Output paths: where a command may write, checked before it writes anything.

retort never deletes or overwrites what it did not create itself. Each command names its output
(a run directory, a trace directory, a JSON or HTML file); these checks refuse, with one line naming
the option and the path, an output that is an existing file where a directory is meant (or the
reverse), or that lies under a file. What a command may replace inside its own output is decided by
the command (a run's `config.yaml`, a trace set's manifest), never by a file name alone. A directory
being written holds the writer's lock file (`LOCK_FILE`, `retort.lock`), which no check of what a
directory holds counts (`entries`). Also where built-in teachers are cached (`cache_dir`,
`teacher_dir`) and how `builtin:teacher` resolves.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import ConfigError, ModelError


def cache_dir() -> Path:
    """Where retort keeps built-in teachers (every track's): $RETORT_CACHE, else ~/.cache/retort."""
    return Path(os.environ.get("RETORT_CACHE") or Path.home() / ".cache" / "retort")


def teacher_dir(track: str, dataset: str) -> Path:
    """Where the built-in teacher of `track` for `dataset` is cached: teacher-TRACK-DATASET."""
    return cache_dir() / f"teacher-{track}-{dataset}"


def resolve_builtin(name: str, dataset: str, *, track: str, builtin, saved_file: str, otherwise: str) -> str:
    """`builtin:teacher` -> the model directory of the cached teacher of a built-in dataset (one
    that holds `saved_file`); any other name is returned as it is. `otherwise`: what to give
    instead, for data that has no built-in teacher."""
    if name != "builtin:teacher":
        return name
    if dataset not in builtin:
        raise ConfigError(f"teacher.name=builtin:teacher: only built-in datasets ({', '.join(builtin)}) have one; "
                          f"{otherwise}")
    path = teacher_dir(track, dataset) / "model"
    if not (path / saved_file).is_file():
        raise ModelError(f"no trained teacher for {dataset} in {path.parent}; train it first: "
                         f"retort teacher track={track} task.name={dataset}")
    return str(path)


# the lock of the command writing a directory (`retort.lock`): inside it, removed when the command ends
LOCK_FILE = ".retort-lock"


def entries(path) -> list[Path]:
    """What directory `path` holds, its writer's lock file (`LOCK_FILE`) left out: a directory that
    holds only a lock file (a writer's now, or one left by a writer killed with -9) is empty."""
    return [p for p in Path(path).iterdir() if p.name != LOCK_FILE]


def _parent_file(path: Path) -> Path | None:
    """The first ancestor of `path` that exists and is not a directory (a file in the way)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output_dir(path, option: str) -> Path:
    """`path` as an output directory: absent, or an existing directory; never a file or under one."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option}={path}: is an existing file; expected a directory (a new or empty one)")
    blocker = _parent_file(p)
    if blocker is not None:
        raise ConfigError(f"{option}={path}: {blocker} is a file, so no directory can be made under it")
    return p


def output_file(path, option: str) -> Path:
    """`path` as an output file: absent or an existing file (replaced); never a directory or under a file."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {path}: is a directory; expected a file name")
    blocker = _parent_file(p)
    if blocker is not None:
        raise ConfigError(f"{option} {path}: {blocker} is a file, so no file can be made under it")
    return p


def sha256_file(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and a rename: a crash leaves the old file
    or the new one, never half of one. The temporary name is unique, so no other file is touched."""
    import tempfile

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "summary.json", "teacher.json", "model", "ckpt")


def remove_run(out: Path) -> None:
    """What `--force` deletes: the entries a teacher run writes, and the directory if that empties
    it. Anything else in `out` (a user's file) stays, and so does the directory."""
    if not (out / "config.yaml").is_file() and entries(out):
        raise ConfigError(f"teacher --force: {out} holds no retort run (no config.yaml); not deleting it")
    for name in RUN_ENTRIES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if not any(out.iterdir()):
        out.rmdir()


DEMO_MARKER = "demo.json"


def marked_dir(out, option: str, marker: str, made_by: str, also_ours: bool = False, mark: bool = True) -> Path:
    """A directory that one command fills with files and sub-directories of fixed names: new, empty,
    or one that command made (it holds `marker`; `also_ours`: the caller recognised the command's
    older files), never one that holds anything else. `mark`: write the marker now; a command that
    checks its other inputs first calls again with `mark=True` before it writes, so a refused run
    leaves nothing behind."""
    import json
    import time

    from . import __version__

    root = output_dir(out, option)
    ours = (root / marker).is_file() or also_ours
    if root.is_dir() and entries(root) and not ours:
        shown = f"{option} {out}" if " " in option else f"{option}={out}"  # "demo --out D", "out=D"
        raise ConfigError(f"{shown}: the directory is not empty and no {made_by} made it (no {marker}); "
                          "choose a new or empty directory")
    if mark and not (root / marker).is_file():
        atomic_write_text(root / marker, json.dumps({"made_by": made_by, "retort_version": __version__,
                                                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    return root


def demo_dir(out, also_ours: bool = False) -> Path:
    """A demo's directory: new, empty, or one a demo made (it holds `demo.json`; `also_ours`: the
    caller recognised an older demo's files); see `marked_dir`."""
    return marked_dir(out, "demo --out", DEMO_MARKER, "retort demo", also_ours)

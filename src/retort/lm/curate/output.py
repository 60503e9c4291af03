"""Where a curate command writes its trace set (`--out`, `--overwrite`), for every command that
writes one (the filters of `select`, `mixed`'s mixed-policy rows, `shorten`'s rewrites):

- `--out` is never the input, never inside it, never a file (`check_output`, before any work);
- a directory that is not empty and is not verifiably a trace set (a retort manifest and nothing
  but shards) is never touched, `--overwrite` or not;
- a trace set already there is replaced only with `--overwrite`, except an unfinished one this
  same command (same arguments) was writing; a resumable command (`resume`) continues a set made
  with the same arguments instead, finished or not (`open_output`);
- each of those commands holds `--out`'s lock while it runs (`holds_out`): a second command
  writing the same `--out` is refused at once.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from ... import __version__
from ...errors import DataError
from ...lock import hold
from ...paths import entries
from ..data.traces import TraceWriter, is_trace_set, remove_trace_set, trace_set_intruders


def holds_out(fn):
    """Decorator of a curate command `fn(src, out, ...)`: it runs holding `out`'s lock
    (`retort.lock`), taken once `out` is known to be neither the input nor inside it."""
    @functools.wraps(fn)
    def run(src, out, *args, **kwargs):
        _check_paths(src, out)
        with hold(out, "curate --out"):
            return fn(src, out, *args, **kwargs)
    return run


def check_output(src: str, out: str, *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse, before any work is done, an --out that is the input, lies inside it, is a file, or
    holds anything `prepare_output` would refuse to replace."""
    _check_paths(src, out)
    _replaceable(out, None, overwrite, resume=resume)


def _check_paths(src: str, out: str) -> None:
    from ...paths import output_dir

    output_dir(out, "curate --out")
    s, o = Path(src).resolve(), Path(out).resolve()
    if o == s:
        raise DataError("curate: --out must differ from the input trace directory")
    if s in o.parents:
        raise DataError(f"curate: --out {out} lies inside the input trace directory {src}; choose a path outside it")


def prepare_output(out: str, params: dict, *, overwrite: bool, resume: bool = False) -> None:
    """Make `out` ready for the trace set `params` (module docstring): absent, empty, or holding a
    trace set that may be replaced (removed now) or, with `resume`, continued."""
    if _replaceable(out, params, overwrite, resume=resume):
        remove_trace_set(out)


def open_output(out: str, params: dict, source: dict, *, overwrite: bool, resume: bool = False,
                shard_rows: dict | None = None) -> TraceWriter:
    """The writer of the curated set `params` in `out` (`prepare_output`), its manifest's task,
    teacher and tokenizer taken from the `source` set's manifest. `shard_rows`: each shard's row
    count when known ahead (`TraceWriter`)."""
    prepare_output(out, params, overwrite=overwrite, resume=resume)
    meta = {k: source.get(k) for k in ("task", "teacher", "tokenizer_sha256", "vocab_size")}
    meta.update(retort_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return TraceWriter(out, params, meta, shard_rows or {})


def _replaceable(out: str, params: dict | None, overwrite: bool, *, resume: bool = False) -> bool:
    """Whether `out` holds a trace set to remove first; raises if it may not be replaced. With
    `params` None (before the command's arguments are resolved) an unfinished set, or any set of
    a resumable command, is given the benefit of the doubt."""
    path = Path(out)
    if not path.exists() or not entries(path):
        return False
    if not is_trace_set(path):
        others = trace_set_intruders(path)
        what = f"holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}" if others else \
            "has no readable retort manifest"
        raise DataError(f"curate: --out {out} is not empty and is not a retort trace set (it {what}); "
                        "choose a new or empty directory")
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    same = params is None or json.loads(json.dumps(params)) == manifest.get("params")
    if resume and same:
        return False  # continued (a finished one: nothing left to do)
    own_crash = not manifest.get("complete") and same
    if not (overwrite or own_crash):
        made = "a curated trace set" if "source" in manifest.get("params", {}) else \
            "a trace set sampled by `retort traces`"
        why = " made with other arguments" if resume else ""
        raise DataError(f"curate: --out {out} already holds {made}{why}; pass --overwrite to replace it, "
                        "or choose another directory")
    return True


__all__ = ["check_output", "holds_out", "open_output", "prepare_output"]

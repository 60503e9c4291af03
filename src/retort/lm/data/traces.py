"""The trace format: Parquet shards `part-NNNNN.parquet` + `manifest.json`.

One row per (prompt id, sample index). A shard is written to `part-NNNNN.parquet.tmp`, flushed and
renamed when whole, then recorded in the manifest (also replaced atomically). A run killed at any
moment leaves only whole shards; a shard renamed but not yet recorded is adopted on the next run,
after its row count is checked. The manifest's `params` fingerprint the run (task, teacher, sampling,
prompts); a rerun with other params into the same directory is refused.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from ...config import diff_keys
from ...errors import DataError
from ...paths import entries, sha256_file

FORMAT = "retort-traces/2"
MANIFEST = "manifest.json"
# every file a trace directory holds: its shards, its manifest, and their temporary names while written
OWN_FILE = re.compile(r"^(part-(\d{5,})\.parquet|manifest\.json|journal-\d{5,}\.jsonl)(\.tmp)?$")

SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("sample_idx", pa.int32()),
    ("prompt", pa.string()),
    ("completion", pa.string()),
    ("completion_ids", pa.list_(pa.int32())),
    ("completion_logprobs", pa.list_(pa.float32())),
    # the teacher's top-k at each completion token, plus the end-of-sequence step when the
    # completion stopped (finish_reason "stop"), in retort.lm.data.topk's compact encoding; null
    # when the traces were made without sampling.topk
    ("topk", pa.binary()),
    ("answer", pa.string()),
    ("reference", pa.string()),
    ("correct", pa.bool_()),
    ("finish_reason", pa.string()),
    ("n_tokens", pa.int32()),
    ("difficulty", pa.int32()),
    # a multi-turn row: the whole conversation as a JSON list of {"role", "content"} (system / user /
    # assistant / tool); its loss mask follows the roles (`retort.lm.data.collate.encode_messages`).
    # Null for single-turn rows (prompt + completion), and absent from shards written before it
    ("messages", pa.string()),
    # a reasoning server's `reasoning_content`, kept apart from the answer (`completion`); null otherwise
    ("reasoning", pa.string()),
    # an API teacher's answer as the server's token strings, log-probs and top alternatives (JSON
    # {"t": [...], "lp": [...], "top": [[[token, logprob], ...], ...]}), whatever the tokenizer; null
    # for local teachers
    ("api_tokens", pa.string()),
    # the teacher that sampled the row (its name) and its weights' SHA-256: a set made by several
    # teachers (`retort traces teachers=[...]`) keeps them apart; null in shards written before
    ("teacher", pa.string()),
    ("teacher_sha256", pa.string()),
    # a program-distillation row (`retort traces program=python`): JSON {output, exit_code, timed_out,
    # error, tries, exemplars} of the program in `completion`; null otherwise
    ("program", pa.string()),
    # an agent row (`retort traces agent=code`): JSON {steps, parse_errors, exec_errors, hit_max_steps,
    # final_answer, first_thought} of the episode in `messages`; null otherwise
    ("agent", pa.string()),
])


def _compatible(schema: pa.Schema) -> bool:
    """A shard schema this version reads: SCHEMA, or SCHEMA before columns were appended to it."""
    names = schema.names
    return names == SCHEMA.names[:len(names)] and all(schema.field(n).type == SCHEMA.field(n).type for n in names)


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def trace_set_intruders(path: str | os.PathLike) -> list[str]:
    """Entries of directory `path` that a trace set does not hold (sub-directories, other files)."""
    return sorted(e.name + ("/" if e.is_dir() else "") for e in entries(path)
                  if not (e.is_file() and OWN_FILE.match(e.name)))


def is_trace_set(path: str | os.PathLike) -> bool:
    """Verifiably a retort trace set: its manifest parses as one, and it holds nothing else but shards."""
    p = Path(path)
    try:
        manifest = json.loads((p / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and str(manifest.get("format", "")).startswith("retort-traces/")
            and isinstance(manifest.get("shards"), dict) and not trace_set_intruders(p))


def remove_trace_set(path: str | os.PathLike) -> None:
    """Delete a trace set that `is_trace_set` vouches for: its own files one by one, then the
    (then empty) directory; the lock of a command writing there stays, and with it the directory.
    Anything else in it is refused before a single file is removed."""
    p = Path(path)
    if not is_trace_set(p):
        raise DataError(f"{p}: not a retort trace set (or it holds other files); refusing to delete it")
    for entry in entries(p):
        entry.unlink()
    if not any(p.iterdir()):  # else it holds the lock of the command replacing the set
        p.rmdir()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def check_target(out: str | os.PathLike) -> Path:
    """`out` as the directory of a trace set to write or continue: new, empty, or holding a retort
    trace manifest; never a file or a directory of other things. Called before any work is done."""
    from ...paths import output_dir

    path = output_dir(out, "out")
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            ok = str(json.loads(manifest.read_text(encoding="utf-8")).get("format", "")).startswith("retort-traces/")
        except (UnicodeDecodeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise DataError(f"{manifest}: not a retort trace manifest; choose another output directory")
    elif path.is_dir() and entries(path):
        raise DataError(f"{path} exists and is not a trace directory (no {MANIFEST}); choose a new or empty one")
    return path


class TraceWriter:
    """Write shards of a trace set resumably. `params` identify the run; `expected_rows(index)`
    gives each shard's row count so a renamed-but-unrecorded shard can be checked and adopted.

    `plan` (shard index -> the prompt ids it holds) lets a resume change `params["n_prompts"]` and
    nothing else (`_resize`): a lower one finishes the set at that size, a higher one continues it."""

    def __init__(self, out: str | os.PathLike, params: dict, meta: dict, shard_rows: dict[int, int],
                 plan: Optional[dict[int, list[str]]] = None):
        self.dir = check_target(out)
        self.resized: Optional[dict] = None  # {"from", "to", "dropped_rows"} when a resume changed n_prompts
        self.params = json.loads(json.dumps(params))
        self.shard_rows = shard_rows
        path = self.dir / MANIFEST
        if path.is_file():
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{path}: not a readable trace manifest ({e}); choose another output directory") from None
            if manifest.get("format") != FORMAT:
                raise DataError(f"{self.dir} holds traces in format {manifest.get('format')!r} (this retort writes "
                                f"{FORMAT!r}); use another output directory, or delete it to sample again")
            diff = sorted(diff_keys(manifest.get("params", {}), self.params))
            if diff == ["n_prompts"] and plan is not None:
                self.resized = self._resize(manifest, plan)
            elif diff == ["n_prompts"]:  # an API teacher's set: its journals and ledger are per shard as planned
                old = manifest["params"].get("n_prompts")
                raise DataError(f"{self.dir} holds traces of n_prompts={old}; an API teacher's set keeps its size "
                                f"(rerun with n_prompts={old}; `retort curate` uses its finished shards meanwhile)")
            elif diff:
                raise DataError(f"{self.dir} holds traces made with other arguments (differ at {', '.join(diff)}); "
                                "use another output directory or the same arguments to continue")
            self.manifest = manifest
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.manifest = {"format": FORMAT, "params": self.params, **meta, "shards": {}, "complete": False}
            self._save()
        for leftover in self.dir.iterdir():
            # only the temporary names this writer uses; a user's own *.tmp file is left alone
            m = OWN_FILE.match(leftover.name)
            if m and m.group(3) and leftover.is_file():
                leftover.unlink()
        self._adopt_unrecorded()

    def _resize(self, manifest: dict, plan: dict[int, list[str]]) -> dict:
        """Take over a set begun with another n_prompts: finished shards holding the prompts `plan`
        puts there are kept, a shard cut by a lower n_prompts keeps its rows of the plan's prompts,
        shards past the plan are removed (this writer's own files), and a last shard that a higher
        n_prompts fills further is redone. Refused when the task draws other prompts at the new
        size (then no shard could be reused). The manifest records the change (`resized`)."""
        old, new = manifest["params"].get("n_prompts"), self.params["n_prompts"]
        actions, dropped = {}, 0
        for key, info in sorted(manifest["shards"].items(), key=lambda kv: int(kv[0])):
            index, path = int(key), self.dir / info["file"]
            if index not in plan or not path.is_file():
                actions[key], dropped = None, dropped + (info["rows"] if index not in plan else 0)
                continue
            table = pq.read_table(path)
            ids = list(dict.fromkeys(table.column("prompt_id").to_pylist()))
            want = list(plan[index])
            if ids == want:
                continue
            if ids[:len(want)] == want:  # cut by a lower n_prompts
                for name in SCHEMA.names:  # a shard written before a column was added (messages): null
                    if name not in table.column_names:
                        table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
                table = table.select(SCHEMA.names)
                keep = table.filter(pa.array([p in set(want) for p in table.column("prompt_id").to_pylist()]))
                actions[key], dropped = keep, dropped + table.num_rows - keep.num_rows
            elif want[:len(ids)] == ids:  # a last shard a higher n_prompts fills further: redone
                actions[key] = None
            else:
                raise DataError(f"{self.dir}: n_prompts={new} draws other prompts than the set's n_prompts={old} "
                                f"(shard {index} differs), so its shards cannot be reused; use n_prompts={old} "
                                "or another output directory")
        # the manifest first, without the shards that change: killed before their files are, a rerun
        # finds them unlisted and redoes them (`_adopt_unrecorded`: their row counts are not the plan's)
        self.manifest = manifest
        files = {key: manifest["shards"].pop(key)["file"] for key in actions}
        manifest["params"], manifest["complete"] = self.params, False
        manifest.pop("stats", None)
        change = {"from": old, "to": new, "dropped_rows": dropped,
                  "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        manifest.setdefault("resized", []).append(change)
        self._save()
        for key, action in actions.items():
            if action is None:
                (self.dir / files[key]).unlink(missing_ok=True)
            else:
                self.write_shard(int(key), action)
        return change

    def _save(self) -> None:
        _atomic_write_text(self.dir / MANIFEST, json.dumps(self.manifest, indent=1))

    def _adopt_unrecorded(self) -> None:
        for path in sorted(self.dir.glob("part-*.parquet")):
            m = OWN_FILE.match(path.name)
            if not m or m.group(3) or not path.is_file():
                continue
            index = int(m.group(2))
            if str(index) in self.manifest["shards"]:
                continue
            try:
                meta = pq.ParquetFile(path)
                ours = _compatible(meta.schema_arrow)
            except Exception:  # pyarrow raises several types for a file that is not Parquet
                ours = False
            if not ours:
                raise DataError(f"{path}: a file the manifest does not list, and not a shard a retort trace writer "
                                "wrote; move it away and rerun")
            if meta.metadata.num_rows != self.shard_rows.get(index):
                # written by a writer that does not know its shards' sizes ahead (mixed-policy), or
                # by other arguments: a trace writer's own file, so it is redone
                path.unlink()
                continue
            self._record(index, path, meta.metadata.num_rows)
        self._save()

    def _record(self, index: int, path: Path, rows: int) -> None:
        self.manifest["shards"][str(index)] = {"file": path.name, "rows": rows, "bytes": path.stat().st_size,
                                              "sha256": sha256_file(path)}

    def done(self) -> set[int]:
        return {int(i) for i in self.manifest["shards"]}

    def write_shard(self, index: int, rows: "list[dict] | pa.Table", extra: Optional[dict] = None) -> None:
        table = rows.cast(SCHEMA) if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=SCHEMA)
        final = self.dir / shard_name(index)
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        self._record(index, final, table.num_rows)
        self.manifest["shards"][str(index)].update(extra or {})
        self._save()

    def update(self, **fields) -> None:
        """Set top-level manifest fields (e.g. an API run's ledger) and save."""
        self.manifest.update(json.loads(json.dumps(fields)))
        self._save()

    def finish(self, stats: dict) -> None:
        tokens = stats.get("tokens", {}).get("total", 0)
        disk = sum(info["bytes"] for info in self.manifest["shards"].values())
        stats = {**stats, "bytes_on_disk": disk, "bytes_per_token": disk / max(1, tokens)}
        self.manifest["complete"] = True
        self.manifest["stats"] = stats
        self._save()


class Journal:
    """Append-only JSON lines: what a run received, kept the moment it arrives (an API teacher's
    answers, before their shard is whole). Each line is written with one `write` and flushed to the
    operating system at once (so a killed process loses nothing it had received), and fsynced at
    most `sync_s` later (so a machine that loses power loses at most that much). A torn last line
    (killed mid-write) is cut off when the journal is read."""

    def __init__(self, path: str | os.PathLike, sync_s: float = 0.2):
        import time

        self.path, self.sync_s, self._time = Path(path), sync_s, time.monotonic
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._synced = self._time()

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict]:
        p = Path(path)
        if not p.is_file():
            return []
        data = p.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line: cut, so the next append starts on a line of its own
            with open(p, "r+b") as fh:
                fh.truncate(end)
                os.fsync(fh.fileno())
        out = []
        for n, line in enumerate(data[:end].splitlines(), 1):
            try:
                out.append(json.loads(line))
            except ValueError:
                raise DataError(f"{p}:{n}: not a JSON line (the journal of an unfinished shard was changed); "
                                "delete the file to request that shard's answers again") from None
        return out

    def append(self, record: dict) -> None:
        os.write(self._fd, (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
        if self._time() - self._synced >= self.sync_s:
            self.sync()

    def sync(self) -> None:
        os.fsync(self._fd)
        self._synced = self._time()

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None


def read_manifest(path: str | os.PathLike) -> dict:
    p = Path(path) / MANIFEST
    if not p.is_file():
        raise DataError(f"{path}: not a trace directory (no {MANIFEST}); make one with `retort traces`")
    try:
        manifest = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: not valid JSON ({e.msg})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{p}: expected a JSON object (a retort trace manifest)")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{p}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def unfinished_note(path: str | os.PathLike, manifest: dict, table: pa.Table) -> Optional[str]:
    """For a set whose run has not finished (None once it has): how much of the plan its finished
    shards hold, for commands that use them (`curate --stats`, `curate --correct`)."""
    if manifest.get("complete"):
        return None
    params = manifest.get("params", {})
    planned, per_shard = params.get("n_prompts"), params.get("shard_prompts")
    prompts = len(set(table.column("prompt_id").to_pylist())) if "prompt_id" in table.column_names else 0
    shards = len(manifest.get("shards", {}))
    of = f" of the {planned} planned" if planned else ""
    of_shards = f" of {-(-planned // per_shard)}" if planned and per_shard else ""
    return (f"{path}: an unfinished trace set; using its {shards}{of_shards} finished shards, {table.num_rows} rows "
            f"holding {prompts}{of} prompts (rerun its `retort traces` command to finish it, or with a lower "
            "n_prompts to end it at that size)")


def read_traces(path: str | os.PathLike, *, verify: bool = True, allow_incomplete: bool = False,
                columns: Optional[Iterable[str]] = None) -> pa.Table:
    """All rows of a trace set, shards in order. Checks row counts (and checksums if `verify`)."""
    manifest = read_manifest(path)
    if not manifest.get("complete") and not allow_incomplete:
        raise DataError(f"{path}: trace run is not finished; rerun the same `retort traces` command to complete it "
                        "(a lower n_prompts ends it sooner), or use its finished shards: `retort curate "
                        f"{path} --correct --out NEW_DIR`")
    tables = []
    for index in sorted(manifest["shards"], key=int):
        info = manifest["shards"][index]
        f = Path(path) / info["file"]
        if not f.is_file():
            raise DataError(f"{f}: shard listed in the manifest is missing")
        if verify and sha256_file(f) != info["sha256"]:
            raise DataError(f"{f}: checksum does not match the manifest (file changed or corrupt)")
        present = set(pq.ParquetFile(f).schema_arrow.names)
        t = pq.read_table(f, columns=[c for c in columns if c in present] if columns else None)
        for name in ([c for c in columns] if columns else SCHEMA.names):
            if name not in t.column_names:  # a column added to the format later (messages): null
                t = t.append_column(SCHEMA.field(name), pa.nulls(t.num_rows, SCHEMA.field(name).type))
        t = t.select(list(columns) if columns else SCHEMA.names)
        if t.num_rows != info["rows"]:
            raise DataError(f"{f}: {t.num_rows} rows, manifest says {info['rows']}")
        tables.append(t)
    if not tables:
        return SCHEMA.empty_table() if not columns else SCHEMA.empty_table().select(list(columns))
    return pa.concat_tables(tables)

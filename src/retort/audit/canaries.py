"""A private corpus with canaries (`retort audit canaries`), and the manifest that records them.

`write_corpus` draws distinct secrets uniformly from the canary space, inserts each canary's text
`repeats` times (e.g. 1, 5 and 20, `per_repeat` canaries each) at seeded random positions among the
source's records, and keeps `controls` more secrets out of the corpus (repeats 0: the exposure a
model has for a secret it never saw, the baseline every inserted one is read against). The
manifest (JSON, `kind: retort-canaries`) records the format, the space, every secret and how often
it was inserted; `retort audit --canaries MANIFEST` measures their exposure.

Records: a `.txt` source is one record a line (canaries become lines); a `.jsonl` source is one
object a line, and a canary row is `row` (fixed other fields, e.g. a prompt) with `field` set to
the canary text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .exposure import DIGITS, CanaryFormat

KIND = "retort-canaries"
FORMATS = (".txt", ".jsonl")


def _read_records(path: Path) -> list:
    """A .txt file's non-empty lines, or a .jsonl file's objects; the first bad line is named."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix not in FORMATS:
        raise DataError(f"{path}: expected a .txt (one record a line) or .jsonl file")
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".txt":
            records.append(line)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        records.append(row)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def write_corpus(out: str, fmt: CanaryFormat, *, repeats: Sequence[int] = (1, 5, 20), per_repeat: int = 1,
                 controls: int = 1, source: str | None = None, field: str = "text", row: dict | None = None,
                 seed: int = 0, manifest: str | None = None) -> dict:
    """Write `out` (the source's records with the canaries inserted) and its manifest
    (`manifest`, default OUT + '.canaries.json'); returns the manifest. Neither file may exist."""
    from ..paths import atomic_write_text, output_file

    out_p = Path(out)
    man_p = Path(manifest) if manifest else out_p.with_name(out_p.name + ".canaries.json")
    if out_p.suffix not in FORMATS:
        raise ConfigError(f"--out {out}: expected a .txt or .jsonl file name")
    if source is not None and Path(source).suffix != out_p.suffix:
        raise ConfigError(f"--out {out}: a {Path(source).suffix} source is written as {Path(source).suffix}")
    if any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in repeats) or not repeats:
        raise ConfigError(f"--repeats {','.join(map(str, repeats))}: expected whole numbers >= 1 (times each "
                          "canary is inserted), e.g. 1,5,20")
    if per_repeat < 1 or controls < 0:
        raise ConfigError(f"--per-repeat {per_repeat} / --controls {controls}: expected >= 1 / >= 0")
    for p, opt in ((out_p, "--out"), (man_p, "--manifest")):
        output_file(p, opt)
        if p.exists():  # this command writes new files only: it never replaces what it did not make
            raise ConfigError(f"{opt} {p}: exists; choose a new name (the corpus and its manifest are written new)")
    if out_p.suffix == ".jsonl" and (not field or (row is not None and not isinstance(row, dict))):
        raise ConfigError("--field / --row: a .jsonl canary row needs a field name and, optionally, a JSON object")
    records = _read_records(Path(source)) if source else []
    n_secrets = len(repeats) * per_repeat + controls
    if n_secrets > fmt.size:
        raise ConfigError(f"{n_secrets} canaries asked for but the space holds {fmt.size} secrets: raise the length")
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    seen: set[str] = set()
    while len(chosen) < n_secrets:  # distinct secrets, uniform over the space
        s = "".join(fmt.alphabet[d] for d in rng.integers(0, len(fmt.alphabet), size=fmt.length))
        if s not in seen:
            seen.add(s)
            chosen.append(s)
    canaries = [{"secret": s, "text": fmt.text(s), "repeats": r}
                for s, r in zip(chosen, [r for r in repeats for _ in range(per_repeat)] + [0] * controls)]

    def record(text: str):
        return text if out_p.suffix == ".txt" else {**(row or {}), field: text}

    inserted = [record(c["text"]) for c in canaries for _ in range(c["repeats"])]
    # each copy at its own uniform position among the source's records (their order kept)
    slots = np.sort(rng.integers(0, len(records) + 1, size=len(inserted)))
    order = rng.permutation(len(inserted))
    rows, k = [], 0
    for i in range(len(records) + 1):
        while k < len(inserted) and slots[k] == i:
            rows.append(inserted[order[k]])
            k += 1
        if i < len(records):
            rows.append(records[i])
    if out_p.suffix == ".txt" and any("\n" in c["text"] for c in canaries):
        raise ConfigError("canary format: a .txt record is one line; the format holds a newline (use .jsonl)")
    text = "".join((r if out_p.suffix == ".txt" else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)
    man = {"kind": KIND, "format": fmt.format, "alphabet": fmt.alphabet, "length": fmt.length,
           "space_size": fmt.size, "canaries": canaries, "corpus": str(out_p), "source": source,
           "source_records": len(records), "records": len(rows), "field": field if out_p.suffix == ".jsonl" else None,
           "row": (row or {}) if out_p.suffix == ".jsonl" else None, "seed": seed}
    atomic_write_text(out_p, text)
    atomic_write_text(man_p, json.dumps(man, indent=2))
    man["manifest"] = str(man_p)
    return man


def canary_prompt(path: str) -> str | None:
    """The prompt canary rows were written with (`--row '{"prompt": ...}'` with `--field` another
    field than `text`): a model trained on prompt + completion is scored on the canary as that
    prompt's completion, as it saw it. None: the canary is scored as text on its own."""
    man = json.loads(Path(path).read_text(encoding="utf-8"))
    row, field = man.get("row") or {}, man.get("field")
    prompt = row.get("prompt") if isinstance(row, dict) else None
    return prompt if isinstance(prompt, str) and field not in (None, "text", "prompt") else None


def read_manifest(path: str) -> tuple[CanaryFormat, list[dict]]:
    """The canary format and the canaries ({secret, repeats, ...}) of a manifest."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--canaries {path}: no such file (a manifest `retort audit canaries` writes)")
    try:
        man = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("kind") != KIND:
        raise DataError(f"{path}: not a canary manifest (expected an object with kind={KIND!r})")
    for key in ("format", "length", "canaries"):
        if key not in man:
            raise DataError(f"{path}: missing field {key!r}")
    fmt = CanaryFormat(str(man["format"]), man["length"], str(man.get("alphabet", DIGITS)))
    canaries = man["canaries"]
    if not isinstance(canaries, list) or not canaries:
        raise DataError(f"{path}: field 'canaries' must be a non-empty list")
    for i, c in enumerate(canaries):
        if not isinstance(c, dict) or not isinstance(c.get("secret"), str):
            raise DataError(f"{path}: canaries[{i}] needs a string 'secret'")
        fmt.check(c["secret"])
        if not isinstance(c.get("repeats", 0), int):
            raise DataError(f"{path}: canaries[{i}].repeats must be a whole number")
    return fmt, canaries

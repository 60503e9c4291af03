"""The import contracts (pyproject.toml [tool.importlinter]) hold: layers, a core that never imports a
track, methods that import neither one another nor the loop; and they would catch an upward import, a
core module importing a track, a method importing another, and a method missing from its contract."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LINT = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root / "src"), "PATH": str(Path(sys.executable).parent)}
    return subprocess.run([LINT, "--config", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def lint_available():
    if not Path(LINT).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")


def test_the_layer_contract_is_kept(lint_available):
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "9 kept, 0 broken" in proc.stdout


def _lint_with(tmp_path, module: str, code: str) -> subprocess.CompletedProcess:
    """import-linter on a copy of the package with `code` appended to `module` (a path under retort/)."""
    shutil.copytree(ROOT / "src" / "retort", tmp_path / "src" / "retort",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "src" / "retort" / module
    path.write_text(path.read_text() + code)
    return _lint(tmp_path)


def test_an_upward_import_breaks_the_contract(lint_available, tmp_path):
    proc = _lint_with(tmp_path, "lm/data/collate.py", "\n\ndef _upward():\n    from ..methods import METHODS\n    return METHODS\n")
    assert proc.returncode != 0 and "retort.lm.data.collate -> retort.lm.methods" in proc.stdout, proc.stdout


def test_the_core_importing_a_track_breaks_the_contract(lint_available, tmp_path):
    proc = _lint_with(tmp_path, "train/checkpoint.py", "\n\ndef _track():\n    from ..lm.models import lora\n    return lora\n")
    assert proc.returncode != 0 and "the core never imports a track BROKEN" in proc.stdout, proc.stdout


def test_a_track_importing_another_breaks_the_contract(lint_available, tmp_path):
    proc = _lint_with(tmp_path, "classify/methods/kd.py", "\n\ndef _other():\n    from ...lm.tasks import TASKS\n    return TASKS\n")
    assert proc.returncode != 0 and "retort.classify.methods.kd -> retort.lm.tasks" in proc.stdout, proc.stdout


def _contract(name: str) -> dict:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"] == name)


@pytest.mark.parametrize("track,contract", [("lm", "language-model methods never import one another"),
                                            ("classify", "classifier methods never import one another"),
                                            ("diffuse", "diffusion methods never import one another")])
def test_every_registered_method_is_in_its_independence_contract(track, contract):
    from retort.track import get_track

    listed = set(_contract(contract)["modules"])
    modules = {cls.__module__ for cls in get_track(track).methods.values()}
    assert modules <= listed, f"add {sorted(modules - listed)} to {contract!r} in pyproject.toml"
    assert all(m.startswith(f"retort.{track}.methods.") for m in listed)
    forbidden = _contract("methods never import the training loop")
    assert f"retort.{track}.methods" in forbidden["source_modules"] and forbidden["forbidden_modules"] == ["retort.train"]


def test_a_method_importing_another_breaks_the_contract(lint_available, tmp_path):
    proc = _lint_with(tmp_path, "classify/methods/dkd.py", "\n\ndef _other():\n    from .kd import KD\n    return KD\n")
    assert proc.returncode != 0 and "classifier methods never import one another BROKEN" in proc.stdout, proc.stdout


def test_a_method_importing_the_loop_breaks_the_contract(lint_available, tmp_path):
    proc = _lint_with(tmp_path, "diffuse/methods/cd.py", "\n\ndef _loop():\n    from ...train import loop\n    return loop\n")
    assert proc.returncode != 0 and "methods never import the training loop BROKEN" in proc.stdout, proc.stdout

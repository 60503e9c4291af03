"""The README's Python examples (one per track) run as written, and give the same numbers as the
commands in their comments: the CLI is a thin layer over `retort.api`."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from retort.cli import main

README = Path(__file__).parent.parent / "README.md"


def _examples() -> list[str]:
    text = README.read_text()
    section = text[text.index("## From Python"):]
    section = section[:section.index("\n## ", 5)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _timeless(value):
    """Results without wall-clock numbers (they differ run to run)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if not re.search(r"time|seconds|_s$", k)}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _losses(run: Path) -> list:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_the_readme_has_one_example_per_track():
    from retort.track import TRACKS

    examples = _examples()
    assert len(examples) == len(TRACKS)
    for code in examples:
        assert "api.train(" in code and "api.evaluate(" in code and "# retort train " in code


@pytest.mark.parametrize("i", range(3))
def test_a_readme_example_gives_the_numbers_of_its_commands(i, tmp_path, monkeypatch):
    code = _examples()[i]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, f"README example {i + 1}", "exec"), scope)

    commands = [shlex.split(line.strip()[len("# retort "):]) for line in code.splitlines()
                if line.strip().startswith("# retort ")]
    assert [c[0] for c in commands] == ["train", "eval"]
    for args in commands:
        args = [a.replace("runs/", "cli/") for a in args]
        if args[0] == "eval" and "--json" not in args:
            args += ["--json", "cli/eval.json"]
        assert main(args) == 0, args
    train_out = next(a.split("=", 1)[1] for a in commands[0] if a.startswith("out="))
    py_run, cli_run = tmp_path / train_out, tmp_path / train_out.replace("runs/", "cli/")
    cli_summary = json.loads((cli_run / "summary.json").read_text())
    assert scope["summary"]["steps"] == cli_summary["steps"]
    assert _timeless(scope["summary"]["eval"]) == _timeless(cli_summary["eval"])
    assert _losses(py_run) == _losses(cli_run)
    json_arg = commands[1][commands[1].index("--json") + 1] if "--json" in commands[1] else "cli/eval.json"
    cli_results = json.loads((tmp_path / json_arg.replace("runs/", "cli/")).read_text())
    # the two runs differ only in where they are: runs/... and cli/...
    assert _timeless(json.loads(json.dumps(scope["results"]).replace("runs/", "cli/"))) == _timeless(cli_results)
    if "api.report(" in code:
        assert (py_run / "report.html").is_file()


def test_every_tracks_configs_take_track_by_name():
    from retort import api
    from retort.track import TRACKS

    for name in TRACKS:
        assert api.train_config(track=name).track == name
        assert api.eval_config(track=name).track == name

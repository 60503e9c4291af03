"""Every YAML in configs/ loads against its schema (and names a command in its header)."""

from pathlib import Path

import pytest

from retort.config import load_config, peek_track

from retort.lm.config import EvalRun, TracesRun
from retort.track import get_track

ROOT = Path(__file__).parent.parent / "configs"
# the top level, and the chains of runs kept in a folder of their own (configs/acereason: one run per stage)
CONFIGS = sorted([*ROOT.glob("*.yaml"), *ROOT.glob("acereason/*.yaml")])


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_loads(path):
    header = path.read_text().splitlines()[0]
    assert header.startswith("# retort "), f"{path.name} must start with the command that runs it"
    command = header.split()[2]
    track = get_track(peek_track(str(path), []))
    cls = {"eval": EvalRun, "traces": TracesRun}.get(command, track.run_config)
    run = load_config(cls, str(path))
    if cls is track.run_config:  # and the method's own options
        from retort.track import method_config

        method_config(run, track)

"""The README's "Adding a track" and "Adding a method" tables list exactly the members of
`retort.track.Track` and the hooks of `retort.contract.Method`; and the import graph of src/ has no
cycle."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def _table_names(heading: str) -> set[str]:
    text = README.read_text()
    part = text[text.index(heading):]
    end = part.find("\n#", 5)
    part = part if end < 0 else part[:end]
    names = set()
    for line in part.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names |= {re.match(r"\w+", n).group(0) for n in re.findall(r"`([^`]+)`", first)}
    return names


def _members(cls) -> set[str]:
    return {n for c in cls.__mro__ if c is not object for n in vars(c)
            if not n.startswith("_")}


def test_the_track_table_lists_every_member_of_track():
    from retort.track import Track

    assert _table_names("### Adding a track") == _members(Track)


def test_the_method_table_lists_every_hook_of_the_contract():
    from retort.contract import Method

    assert _table_names("### Adding a method") == _members(Method)


def test_no_import_cycle_in_src():
    import grimp

    graph = grimp.build_graph("retort")
    modules = sorted(graph.modules)
    cycles = []
    for m in modules:
        for imported in graph.find_modules_directly_imported_by(m):
            if graph.chain_exists(importer=imported, imported=m):
                cycles.append((m, imported))
    assert not cycles, cycles[:10]

"""The synthetic private corpus (`retort.lm.data.notes`): deterministic by seed, public notes of the
same style with no private person, rows a file task reads, canaries inserted by the audit's writer,
and new files only."""

import json
import re

import pytest

from retort.errors import ConfigError
from retort.lm.data.notes import notes, write_notes
from retort.lm.tasks import get_task


def _first_names(rows):
    return {re.search(r"(?:held by |^)([A-Z][a-z]+) [A-Z]", r["solution"]).group(1) for r in rows}


def test_notes_are_deterministic_by_seed_and_public_shares_no_first_name():
    a, b = notes(300, seed=3, public=False), notes(300, seed=3, public=False)
    assert a == b and a != notes(300, seed=4, public=False)
    pub = notes(300, seed=3, public=True)
    assert {r["prompt"] for r in a} == {r["prompt"] for r in pub} == {"Patient note:", "Account note:"}
    assert not _first_names(a) & _first_names(pub)
    assert all(r["answer"] in r["solution"] and re.search(r"\d{7}", r["solution"]) for r in a)
    assert len({r["solution"] for r in a}) == 300


def test_written_notes_are_a_file_task_and_take_canaries(tmp_path):
    from types import SimpleNamespace

    from retort.audit.canaries import write_corpus
    from retort.audit.exposure import CanaryFormat

    paths = write_notes(str(tmp_path / "c"), n_private=40, n_public=10, seed=1)
    assert len((tmp_path / "c" / "private.jsonl").read_text().splitlines()) == 40
    man = write_corpus(str(tmp_path / "c" / "canaried.jsonl"), CanaryFormat("My PIN is {secret}.", 4),
                       source=paths["private"], field="solution", row={"prompt": "Account note:", "answer": "0"},
                       repeats=(1, 5), seed=0)
    assert man["records"] == 46
    task = get_task(SimpleNamespace(name=str(tmp_path / "c" / "canaried.jsonl"), verifier="exact",
                                    test_fraction=0.0, difficulty=None, prompt=None, system=None, answer=None))
    rows = task.examples("train", 46, 0)
    texts = [r.solution for r in rows]
    assert sum(t == man["canaries"][1]["text"] for t in texts) == 5
    with pytest.raises(ConfigError, match="exists"):
        write_notes(str(tmp_path / "c"), n_private=2, n_public=2)
    assert json.loads((tmp_path / "c" / "private.jsonl").read_text().splitlines()[0])["id"] == "priv-0"

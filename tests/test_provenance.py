"""Provenance tracing (`retort eval --provenance TEACHER,BASE`): the categories' rule, the shares
on models whose relation is known, the CLI and the report."""

import json

import pytest
import torch

from retort.cli import main
from retort.lm.config import EvalConfig, ModelConfig, TaskConfig
from retort.lm.curate.provenance import CATEGORIES, classify, provenance
from retort.lm.models import load_model
from retort.lm.tasks import get_task


def test_the_categories_follow_the_spec_with_margin_delta():
    assert classify(-1.0, -2.5, -1.0) == "teacher"
    assert classify(-2.5, -1.0, -1.0) == "student"
    assert classify(-2.0, -2.3, -0.5) == "boosted"  # T and S agree, D far above both
    assert classify(-2.0, -2.3, -3.5) == "boosted"  # ... or far below
    assert classify(-2.0, -2.3, -2.2) == "shared"
    assert classify(-1.0, -2.5, -1.0, delta=2.0) == "shared"


def _wide(seed):
    m, tok = load_model(ModelConfig(name="preset:nano"), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.6, generator=g)
    return m.eval(), tok


def test_shares_on_models_whose_relation_is_known():
    task, cfg = get_task(TaskConfig()), EvalConfig(n=8, max_new_tokens=16, batch_size=8)
    t, tok = _wide(0)
    s, _ = _wide(1)
    same = provenance(t, tok, t, t, task, cfg)
    assert same["overall"]["shared"] == 1.0 and same["overall"]["sentences"] > 0
    # the "distilled" model is the teacher itself, the base another model: no boosted sentence,
    # and the teacher-originated ones outnumber the student-originated ones
    got = provenance(t, tok, t, s, task, cfg)
    o = got["overall"]
    assert o["boosted"] == 0.0 and o["teacher"] > o["student"]
    assert sum(o[c] for c in CATEGORIES) == pytest.approx(1.0)
    assert got["correct"]["sentences"] + got["incorrect"]["sentences"] == o["sentences"]
    assert sum(p["sentences"] for p in got["by_position"].values()) == o["sentences"]


def test_eval_cli_and_report_show_provenance(tmp_path):
    dirs = {}
    for name, seed in (("t", 0), ("s", 1), ("d", 2)):
        m, tok = _wide(seed)
        m.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        dirs[name] = tmp_path / name
    out = tmp_path / "e.json"
    assert main(["eval", "-m", f"d={dirs['d']}", "--provenance", f"{dirs['t']},{dirs['s']}", "--json", str(out),
                 "eval.n=4", "eval.max_new_tokens=12"]) in (0, None)
    p = json.loads(out.read_text())["d"]["provenance"]
    assert set(p["overall"]) == {*CATEGORIES, "sentences"} and p["answers"] == 4
    html = tmp_path / "r.html"
    assert main(["report", str(out), "-o", str(html)]) == 0
    assert "provenance tracing" in html.read_text() and "teacher | correct" in html.read_text()
    assert main(["eval", "-m", f"d={dirs['d']}", "--provenance", str(dirs["t"])]) == 2  # needs TEACHER,BASE

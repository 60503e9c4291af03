"""`retort curate`'s command line: the grouped --help, the conflict rules (each refused with its own
message, exit status 2, before any trace set is read) and every option in exactly one group."""

from __future__ import annotations

import re

import click
import pytest

from retort.cli import main
from retort.lm.cli.curate import GROUPS, RULES, curate
from retort.lm.cli.grouped import GroupedCommand, GroupedOption, needs

EXPECTED_GROUPS = {
    "Statistics": ["--stats", "--ref-model"],
    "Filters": ["--correct", "--agent-filter", "--max-tokens", "--first-k-correct", "--teacher", "--max-ppl", "--drop-templates",
                "--template-ngram", "--template-max", "--diverse", "--pairs"],
    "Selection": ["--das", "--das-keep", "--das-delta", "--das-rule", "--select-teacher", "--smoke-steps",
                  "--probe-n"],
    "New traces": ["--mixed-policy", "--mixed-from", "--cut-lo", "--length-factor", "--with-source", "--rewrite",
                   "--budgets", "--budget", "--rewrite-template", "--retro-search", "--gamma", "--transitions",
                   "--retro-partial", "--retro-tries", "--truncate-like", "--multi-turn", "--intermediate",
                   "--unit-steps", "--answer-cue", "--answer-tokens", "--knowledge", "--knowledge-rule",
                   "--knowledge-template", "--reviser", "--teacher-url",
                   "--temperature", "--max-prompts"],
    "Output": ["--out", "--overwrite", "--seed", "--batch-size", "-h"],
}

# rule (its message as declared) -> (arguments that break it and no rule before it, the message printed: today's)
OUT = ["--out", "{tmp}/out"]
BROKEN = {
    "curate: pass --stats, --select-teacher STUDENT, or --out DIR with filters": (
        ["--correct"], "curate: pass --stats, --select-teacher STUDENT, or --out DIR with filters"),
    "curate: --ref-model goes with --stats or --max-ppl": (
        [*OUT, "--ref-model", "REF"], "curate: --ref-model goes with --stats or --max-ppl"),
    "curate --max-ppl: name the reference model the perplexity is measured under (--ref-model)": (
        [*OUT, "--max-ppl", "5"],
        "curate --max-ppl: name the reference model the perplexity is measured under (--ref-model)"),
    "curate --max-ppl is a filter: it needs --out DIR": (
        ["--stats", "--max-ppl", "5", "--ref-model", "REF"], "curate --max-ppl is a filter: it needs --out DIR"),
    "curate: {opts} each make a new trace set; one per curate step": (
        [*OUT, "--retro-search", "--mixed-policy", "S", "--truncate-like", "D"],
        ("curate: --mixed-policy and --retro-search and --truncate-like each make a new trace set; one per curate "
         "step")),
    "curate: {opt} needs --out DIR": (["--stats", "--truncate-like", "D"], "curate: --truncate-like needs --out DIR"),
    "curate: {opt} makes new traces (from the correct ones); run the filters in a separate curate step": (
        [*OUT, "--rewrite", "dap", "--pairs", "0"],
        "curate: --rewrite makes new traces (from the correct ones); run the filters in a separate curate step"),
    "curate: --budget goes with --rewrite uniform": (
        [*OUT, "--rewrite", "dap", "--budget", "5"], "curate: --budget goes with --rewrite uniform"),
    "curate: --answer-cue goes with --multi-turn": (
        [*OUT, "--retro-search", "--answer-cue", "A:"], "curate: --answer-cue goes with --multi-turn"),
    "curate: {opt} goes with --knowledge": (
        [*OUT, "--knowledge-rule"], "curate: --knowledge-rule goes with --knowledge"),
    ("curate: {opt} is for a teacher that writes the knowledge; --knowledge-rule writes it by the task's rule: "
     "pass one or the other"): (
        [*OUT, "--knowledge", "--knowledge-rule", "--reviser", "M"],
        ("curate: --reviser is for a teacher that writes the knowledge; --knowledge-rule writes it by the task's "
         "rule: pass one or the other")),
    "curate: --mixed-policy makes new traces; run the filters in a separate curate step": (
        [*OUT, "--stats", "--mixed-policy", "S", "--das", "S"],
        "curate: --mixed-policy makes new traces; run the filters in a separate curate step"),
}


def _sections(text: str) -> dict:
    """--help text -> {section heading: [the first flag of each option row]}."""
    found, current = {}, None
    for line in text.splitlines():
        if re.fullmatch(r"\S[^:]*:", line):
            current = found.setdefault(line[:-1], [])
        elif current is not None and (m := re.match(r"  (-{1,2}[\w-]+)", line)):
            current.append(m.group(1))
    return found


def test_help_lists_the_five_groups_with_their_options(capsys):
    assert main(["curate", "--help"]) == 0
    text = capsys.readouterr().out
    sections = _sections(text)
    assert "Options" not in sections
    assert {k: sections[k] for k in GROUPS} == EXPECTED_GROUPS
    assert list(EXPECTED_GROUPS) == list(GROUPS)
    assert [text.index(f"\n{g}:\n") for g in GROUPS] == sorted(text.index(f"\n{g}:\n") for g in GROUPS)


def test_every_option_belongs_to_exactly_one_group():
    options = [p for p in curate.params if isinstance(p, click.Option)]
    assert all(p.group in GROUPS for p in options)
    declared = [p.opts[0] for p in options]
    assert sorted(declared) == sorted(f for g in EXPECTED_GROUPS.values() for f in g if f != "-h")
    # a new option without a group, or a rule naming no option, is refused when the command is built
    with pytest.raises(TypeError, match="--new belongs to no group"):
        GroupedCommand("c", params=[click.Option(["--new"])], groups=GROUPS)
    with pytest.raises(TypeError, match="--nothing, not an option"):
        GroupedCommand("c", params=[GroupedOption(["--x"], group="Output")], groups=GROUPS,
                       rules=(needs("--x", "--nothing", "m"),))


def test_every_rule_refuses_with_its_message_before_reading_anything(tmp_path, capsys):
    assert set(BROKEN) == {r.message for r in RULES} and len(RULES) == len(BROKEN)
    traces = tmp_path / "no_such_traces"  # never read: a rule refuses first
    for rule in RULES:
        args, message = BROKEN[rule.message]
        args = [a.format(tmp=tmp_path) for a in args]
        assert main(["curate", str(traces), *args]) == 2, args
        assert capsys.readouterr().err == f"error: {message}\n", args
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [
    ["--stats"], ["--stats", "--ref-model", "R"], ["--select-teacher", "S"],
    ["--out", "o", "--correct", "--das", "S", "--pairs", "0"],
    ["--out", "o", "--max-ppl", "5", "--ref-model", "R", "--teacher", "T"],
    ["--out", "o", "--mixed-policy", "S", "--with-source", "--template-ngram", "5"],
    ["--out", "o", "--rewrite", "uniform", "--budget", "9"], ["--out", "o", "--retro-search", "--gamma", "0.5"],
    ["--out", "o", "--truncate-like", "D", "--stats"],
    ["--out", "o", "--multi-turn", "--intermediate", "last-result", "--unit-steps", "0", "--answer-cue", "=>"], ["--select-teacher", "S", "--out", "o", "--diverse", "2"],
])
def test_allowed_combinations_pass_the_rules(args):
    ctx = curate.make_context("curate", ["traces", *args])
    curate.check_rules(ctx.params)  # no RetortError

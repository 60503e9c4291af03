"""AM's template removal and DED's diverse correct trajectories: known-answer tests of the rules,
and the `retort curate` options on a real trace set."""

import pyarrow as pa
import pytest

from retort.lm.curate.diversity import lcs, most_diverse, rouge_l, template_rows


def test_rouge_l_is_the_lcs_f1_over_words():
    assert lcs("a b c d".split(), "a c d e".split()) == 3
    assert rouge_l("a b c d".split(), "a c d e".split()) == pytest.approx(2 * 3 / 8)
    assert rouge_l("x y".split(), "x y".split()) == 1.0 and rouge_l("x".split(), "y".split()) == 0.0


def test_templates_are_ngrams_shared_by_more_than_max_count_traces():
    boiler = "as an AI model I will now solve this carefully step by step"  # 13 words
    texts = [f"{boiler} then {i}" for i in range(5)] + ["a different answer entirely with no boilerplate at all"]
    drop, grams = template_rows(texts, n=13, max_count=4)
    assert drop == {0, 1, 2, 3, 4} and grams == 2  # the 13 words, and the last 12 + "then"
    assert template_rows(texts, n=13, max_count=5)[0] == set()  # in 5 traces: not more than 5
    # counted once per trace: one answer repeating a phrase is not a template
    assert template_rows([" ".join(["loop"] * 40)], n=20, max_count=0)[0] == {0}
    assert template_rows([" ".join(["loop"] * 40)], n=20, max_count=1)[0] == set()


def test_most_diverse_picks_the_traces_that_differ_most():
    texts = ["a b c d e f", "a b c d e g", "a b c d e h", "u v w x y z"]
    # the longest (ties: the first) first, then the one farthest from it, then the farthest from both
    assert most_diverse(texts, 2) == [0, 3]
    assert most_diverse(texts, 1) == [0]
    assert most_diverse(texts, 9) == [0, 1, 2, 3]


def test_curate_drop_templates_and_diverse_on_a_trace_set(tmp_path):
    from retort.config import load_config
    from retort.lm.config import TracesRun
    from retort.lm.curate import filter_traces
    from retort.lm.data.traces import read_manifest, read_traces
    from retort.lm.traces import run_traces

    src = tmp_path / "tr"
    run_traces(load_config(TracesRun, None, [f"out={src}", "teacher.name=preset:nano", "n_prompts=6",
                                             "sampling.n=4", "sampling.max_new_tokens=12", "shard_prompts=3"]))
    table = read_traces(src)
    texts = table["completion"].to_pylist()
    drop, _ = template_rows(texts, n=2, max_count=3)
    out = tmp_path / "t"
    filter_traces(str(src), str(out), templates=(2, 3))
    assert read_traces(out).num_rows == table.num_rows - len(drop)
    assert read_manifest(out)["params"]["filters"]["templates"]["dropped"] == len(drop)
    # --diverse on a set whose every trace is marked correct (the nano teacher is never right)
    fake = tmp_path / "all_correct"
    from retort.lm.data.traces import TraceWriter

    m = read_manifest(src)
    w = TraceWriter(fake, m["params"], {k: m.get(k) for k in ("task", "teacher", "tokenizer_sha256")}, {})
    w.write_shard(0, table.set_column(table.schema.get_field_index("correct"), "correct",
                                      pa.array([True] * table.num_rows)))
    w.finish({})
    div = tmp_path / "div"
    filter_traces(str(fake), str(div), diverse=2)
    rows = read_traces(div).to_pylist()
    by = {}
    for r in rows:
        by.setdefault(r["prompt_id"], []).append(r["completion"])
    assert all(len(v) == 2 for v in by.values()) and len(by) == 6
    for pid, kept in by.items():
        mine = [t for t, p in zip(texts, table["prompt_id"].to_pylist()) if p == pid]
        assert [mine[i] for i in most_diverse(mine, 2)] == kept
    with pytest.raises(Exception, match="--diverse picks its own"):
        filter_traces(str(fake), str(tmp_path / "x"), diverse=2, first_k_correct=1)

"""Several teachers into one trace set (`retort traces teachers=[...]`), and the per-teacher
statistics of `retort curate --stats` (AM's source comparison)."""

import json
import math

import pytest

from retort.cli import main
from retort.config import load_config
from retort.lm.config import ModelConfig, TracesRun
from retort.lm.curate.stats import length_spread, reference_perplexity, trace_stats
from retort.lm.data.hashes import weights_sha256
from retort.lm.data.traces import read_manifest, read_traces
from retort.lm.models import load_model
from retort.lm.traces import run_traces


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        m, tok = load_model(ModelConfig(name="preset:nano"), seed=seed)
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = (root / name, weights_sha256(m))
    return out


def _args(out, *extra):
    return [f"out={out}", "n_prompts=4", "sampling.n=2", "sampling.max_new_tokens=10", "shard_prompts=2", *extra]


def test_each_teacher_samples_every_prompt_as_it_would_alone(tmp_path, teachers):
    (a, sha_a), (b, sha_b) = teachers["a"], teachers["b"]
    both = tmp_path / "both"
    run_traces(load_config(TracesRun, None, _args(both, f"teachers=[{a},{b}]")))
    rows = read_traces(both).to_pylist()
    assert len(rows) == 4 * 2 * 2
    assert len({(r["prompt_id"], r["sample_idx"]) for r in rows}) == len(rows)
    for name, path, sha, first in (("a", a, sha_a, 0), ("b", b, sha_b, 2)):
        alone = tmp_path / name
        run_traces(load_config(TracesRun, None, _args(alone, f"teacher.name={path}")))
        solo = read_traces(alone).to_pylist()
        mine = [r for r in rows if r["teacher"] == str(path)]
        assert [r["sample_idx"] for r in mine] == [first + r["sample_idx"] for r in solo]
        assert [r["completion_ids"] for r in mine] == [r["completion_ids"] for r in solo]
        assert {r["teacher_sha256"] for r in mine} == {sha}
        assert {r["teacher_sha256"] for r in solo} == {sha}  # one teacher: recorded too
    m = read_manifest(both)
    assert [t["name"] for t in m["params"]["teachers"]] == [str(a), str(b)]
    assert m["tokenizer_sha256"] is not None  # the presets share a tokenizer
    by = m["stats"]["by_teacher"]
    assert set(by) == {str(a), str(b)} and all(v["rows"] == 8 for v in by.values())
    assert set(by[str(a)]["length_by_difficulty"]) and by[str(a)]["weights_sha256"] == sha_a


def test_length_spread_is_a_histogram_and_its_entropy():
    got = length_spread([0, 0, 10, 10])
    assert got["histogram"][0] == 2 and got["histogram"][-1] == 2 and sum(got["histogram"]) == 4
    assert got["histogram_entropy"] == pytest.approx(math.log(2)) and got["std"] == 5.0
    assert length_spread([7, 7, 7])["histogram_entropy"] == 0.0


def test_reference_perplexity_under_the_teacher_itself_is_its_own(tmp_path, teachers):
    a, _ = teachers["a"]
    out = tmp_path / "a"
    run_traces(load_config(TracesRun, None, _args(out, f"teacher.name={a}")))
    table = read_traces(out)
    # rows whose text tokenises back to the sampled ids (a random model also emits special tokens,
    # which the text drops): there the reference's perplexity is the teacher's stored one
    _, tok = load_model(ModelConfig(name=str(a)))
    same = [tok(c, add_special_tokens=False)["input_ids"] == list(i)
            for c, i in zip(table["completion"].to_pylist(), table["completion_ids"].to_pylist())]
    import pyarrow as pa

    table = table.filter(pa.array(same))
    assert table.num_rows >= 2
    ppl = reference_perplexity(table, str(a))
    assert set(ppl) == {str(a)}
    assert ppl[str(a)] == pytest.approx(trace_stats(table)["teacher_ppl"], rel=1e-4)


def test_curate_stats_cli_prints_per_teacher_and_reference_ppl(tmp_path, teachers, capsys):
    (a, _), (b, _) = teachers["a"], teachers["b"]
    both = tmp_path / "both"
    run_traces(load_config(TracesRun, None, _args(both, f"teachers=[{a},{b}]")))
    capsys.readouterr()
    assert main(["curate", str(both), "--stats", "--ref-model", str(a)]) in (0, None)
    stats = json.loads(capsys.readouterr().out)
    assert set(stats["by_teacher"]) == {str(a), str(b)}
    assert set(stats["reference_ppl"]) == {"model", str(a), str(b)}
    # under a's weights, a's own traces are likelier than b's
    assert stats["reference_ppl"][str(a)] < stats["reference_ppl"][str(b)]
    assert main(["traces", *_args(tmp_path / "x", "teachers=[openai:m]")]) == 2


def test_max_ppl_drops_each_teachers_traces_above_its_own_limit(tmp_path, teachers, capsys):
    from retort.lm.curate.select import parse_max_ppl
    from retort.lm.curate.stats import perplexity, row_nll

    (a, _), (b, _) = teachers["a"], teachers["b"]
    both = tmp_path / "both"
    run_traces(load_config(TracesRun, None, _args(both, f"teachers=[{a},{b}]")))
    table = read_traces(both)
    ppl = [perplexity(x) for x in row_nll(table, str(a))]
    names = table["teacher"].to_pylist()
    mid = {t: sorted(p for p, n in zip(ppl, names) if n == t)[3] for t in (str(a), str(b))}  # 8 rows each
    spec = f"{a}={mid[str(a)]},{b}={mid[str(b)]}"
    assert main(["curate", str(both), "--out", str(tmp_path / "am"), "--max-ppl", spec, "--ref-model", str(a)]) == 0
    kept = read_traces(tmp_path / "am").to_pylist()
    want = [(r["prompt_id"], r["sample_idx"]) for r, p in zip(table.to_pylist(), ppl) if p <= mid[r["teacher"]]]
    assert [(r["prompt_id"], r["sample_idx"]) for r in kept] == want and len(want) == 8
    sel = read_manifest(tmp_path / "am")["params"]["filters"]["max_ppl"]
    assert sel["dropped"] == {str(a): 4, str(b): 4} and sel["model"] == str(a)
    # one limit for all; "*" for the rest; refusals name what is wrong and write nothing
    assert parse_max_ppl("20") == {"*": 20.0} and parse_max_ppl("x:y=3,*=9") == {"x:y": 3.0, "*": 9.0}
    for bad in ("0", "a=-1", "a=inf", ",", "a=b"):
        with pytest.raises(Exception, match="--max-ppl"):
            parse_max_ppl(bad)
    capsys.readouterr()
    for args, word in [(["--max-ppl", "5"], "--ref-model"), (["--max-ppl", "nobody=5", "--ref-model", str(a)],
                                                             "no teacher 'nobody'")]:
        assert main(["curate", str(both), "--out", str(tmp_path / "bad"), *args]) == 2
        assert word in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_teacher_filter_keeps_one_teachers_rows(tmp_path, teachers, capsys):
    (a, _), (b, _) = teachers["a"], teachers["b"]
    both = tmp_path / "both"
    run_traces(load_config(TracesRun, None, _args(both, f"teachers=[{a},{b}]")))
    assert main(["curate", str(both), "--out", str(tmp_path / "b"), "--teacher", str(b)]) == 0
    rows = read_traces(tmp_path / "b").to_pylist()
    assert len(rows) == 8 and {r["teacher"] for r in rows} == {str(b)}
    assert read_manifest(tmp_path / "b")["params"]["filters"]["teacher"] == str(b)
    capsys.readouterr()
    assert main(["curate", str(both), "--out", str(tmp_path / "c"), "--teacher", "nobody"]) == 2
    err = capsys.readouterr().err
    assert "no row" in err and str(a) in err and not (tmp_path / "c").exists()

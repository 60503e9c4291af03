"""DED's teacher selection (`retort curate --select-teacher STUDENT`): the smoke test's gains,
proxies and cost on a set two teachers sampled."""

import json

import pytest

from retort.cli import main
from retort.config import load_config
from retort.lm.config import ModelConfig, TracesRun
from retort.errors import DataError
from retort.lm.curate.ded import select_teacher
from retort.lm.data.traces import TraceWriter, read_manifest, read_traces
from retort.lm.models import load_model
from retort.lm.traces import run_traces


def test_the_smoke_test_ranks_the_teachers_by_the_students_gain(tmp_path, capsys):
    dirs = []
    for seed in (0, 1):
        m, tok = load_model(ModelConfig(name="preset:nano"), seed=seed)
        m.save_pretrained(tmp_path / f"t{seed}")
        tok.save_pretrained(tmp_path / f"t{seed}")
        dirs.append(tmp_path / f"t{seed}")
    raw = tmp_path / "raw"
    run_traces(load_config(TracesRun, None, [f"out={raw}", f"teachers=[{dirs[0]},{dirs[1]}]", "n_prompts=6",
                                             "sampling.n=2", "sampling.max_new_tokens=10"]))
    # random teachers are never right: mark every trace of the first teacher, half of the second's,
    # correct, so each has something to teach and their own accuracies differ
    table = read_traces(raw)
    names = table["teacher"].to_pylist()
    flags = [t == str(dirs[0]) or i % 2 == 0 for i, t in enumerate(names)]
    import pyarrow as pa

    m = read_manifest(raw)
    src = tmp_path / "src"
    w = TraceWriter(src, m["params"], {k: m.get(k) for k in ("task", "teacher", "tokenizer_sha256")}, {})
    w.write_shard(0, table.set_column(table.schema.get_field_index("correct"), "correct", pa.array(flags)))
    w.finish({})
    got = select_teacher(str(src), "preset:nano", steps=3, probe_n=4, batch_size=4)
    assert set(got["teachers"]) == {str(d) for d in dirs}
    a, b = got["teachers"][str(dirs[0])], got["teachers"][str(dirs[1])]
    assert a["correct_traces"] == 12 and b["correct_traces"] == 6 and a["teacher_accuracy"] == 1.0
    for r in (a, b):
        assert r["gain"] == pytest.approx(r["accuracy_after"] - got["student_accuracy_before"])
        assert r["seconds"] >= 0 and r["tokens_trained"] > 0 and r["student_mean_logprob"] < 0
        assert "teacher_minus_student_logprob" in r  # the presets share a vocabulary
    assert got["ranking_by_teacher_accuracy"][0] == str(dirs[0])
    assert sorted(got["ranking_by_gain"]) == sorted(got["teachers"]) and got["chosen"] == got["ranking_by_gain"][0]
    assert main(["curate", str(src), "--select-teacher", "preset:nano", "--smoke-steps", "2", "--probe-n", "4"]) in (0, None)
    assert json.loads(capsys.readouterr().out)["chosen"] in got["teachers"]
    with pytest.raises(DataError, match="several sampled"):
        select_teacher(str(_one_teacher(tmp_path, dirs[0])), "preset:nano")


def _one_teacher(tmp_path, teacher):
    out = tmp_path / "one"
    run_traces(load_config(TracesRun, None, [f"out={out}", f"teacher.name={teacher}", "n_prompts=2",
                                             "sampling.n=1", "sampling.max_new_tokens=4"]))
    return out

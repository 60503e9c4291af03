"""The HTML report: built from hand-written fake run dirs, so it needs no model or training."""

import base64
import html
import json
import re

import pytest

from retort.errors import RetortError
from retort.report import load_inputs, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _eval(acc, tokens, prompt="What is 2+3?", **extra):
    return {"task": "arith", "split": "test", "n": 200, "accuracy": acc, "mean_tokens": tokens,
            "truncated": 0.0, "by_difficulty": {"10": 0.5, "2": 1.0, "3": 0.9},
            "samples": [{"prompt": prompt, "completion": "5", "reference": "5", "correct": True},
                        {"prompt": "7*6?", "completion": "41", "reference": "42", "correct": False}],
            **extra}


def _run_dir(path, source="solutions", acc=0.565, corrupt=False, eval_rows=True):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(
        f"method: sft\nstudent:\n  name: preset:nano\ndata:\n  source: {source}\n"
        "task:\n  name: arith\n")
    lines = [json.dumps({"step": s, "loss": 2.0 / s, "lr": 1e-3, "grad_norm": 0.5,
                         "tokens": 100 * s, "time": 0.1 * s}) for s in range(1, 21)]
    if eval_rows:
        lines += [json.dumps({"step": s, "eval/n": 200, "eval/accuracy": s / 40,
                              "eval/mean_tokens": 26.0, "eval/truncated": 0.0}) for s in (10, 20)]
    if corrupt:
        lines.append('{"step": 21, "loss": 0.0')  # what a crash mid-write leaves behind
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (path / "summary.json").write_text(json.dumps(
        {"steps": 20, "tokens": 2000, "train_time_s": 130.6, "stopped_early": False,
         "eval": _eval(acc, 26.0), "main_process": True}))
    return path


def _images(page):
    uris = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    return [base64.b64decode(u) for u in uris]


def test_training_runs_report(tmp_path):
    a = _run_dir(tmp_path / "runs" / "sft_solutions", corrupt=True)
    b = _run_dir(tmp_path / "runs" / "sft_answers", source="answers", acc=0.31)
    out = write_report([a, b], tmp_path / "out" / "report.html", title="my <title>")
    assert out == tmp_path / "out" / "report.html" and out.is_file()
    assert list(out.parent.iterdir()) == [out]  # written atomically: no .tmp left behind
    page = out.read_text(encoding="utf-8")
    assert "sft_solutions" in page and "sft_answers" in page
    assert "my &lt;title&gt;" in page and "<title>my <title>" not in page
    assert "56.5%" in page and "31.0%" in page and "130.6" in page
    images = _images(page)
    assert len(images) >= 3  # loss, eval accuracy, accuracy-vs-tokens
    assert all(img.startswith(PNG) for img in images)
    # difficulty columns sort numerically, not as strings
    assert page.index("difficulty 2") < page.index("difficulty 3") < page.index("difficulty 10")
    assert "<pre>" in page and "What is 2+3?" in page
    assert str(a) in page  # footer lists the inputs
    assert "http://" not in page and "https://" not in page  # nothing fetched to view it


def test_corrupt_metrics_line_is_skipped(tmp_path):
    run = _run_dir(tmp_path / "crashed", corrupt=True)
    (rows, runs) = load_inputs([run])
    assert [r["step"] for r in runs[0].train] == list(range(1, 21))
    assert rows[0].steps == 20 and rows[0].train_time == 130.6


def test_prompt_is_escaped(tmp_path):
    run = _run_dir(tmp_path / "evil")
    summary = json.loads((run / "summary.json").read_text())
    summary["eval"] = _eval(0.5, 10.0, prompt="<script>alert('x')</script> & 1<2")
    (run / "summary.json").write_text(json.dumps(summary))
    page = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; 1&lt;2" in page


def test_demo_dir_matches_subdirs_to_labels(tmp_path):
    demo = tmp_path / "demo"
    results = {
        "teacher (built-in)": _eval(0.99, 40.0, params=1_200_000, **{"pass@8": 1.0, "maj@8": 0.99}),
        "student: answers only": _eval(0.31, 4.0, params=350_000),
        "student: sft on worked solutions": _eval(0.56, 26.0, params=350_000),
    }
    _run_dir(demo / "answers_only", source="answers", eval_rows=False)
    _run_dir(demo / "sft_on_worked_solutions")
    _run_dir(demo / "leftover", eval_rows=False)  # matches no label: curve only
    (demo / "results.json").write_text(json.dumps(results))

    rows, runs = load_inputs([demo])
    assert [r.name for r in rows] == list(results)
    by_name = {r.name: r for r in rows}
    assert by_name["teacher (built-in)"].run is None
    assert by_name["student: answers only"].run.path.name == "answers_only"
    assert by_name["student: sft on worked solutions"].run.path.name == "sft_on_worked_solutions"
    assert sorted(r.name for r in runs) == ["leftover", "student: answers only",
                                            "student: sft on worked solutions"]

    page = write_report([demo], tmp_path / "demo.html").read_text(encoding="utf-8")
    for label in results:
        assert label in page
    assert "pass@8" in page and "maj@8" in page and "1.2M" in page and "350K" in page
    assert "130.6" in page  # train time of a matched subdir
    images = _images(page)
    assert len(images) >= 2 and all(img.startswith(PNG) for img in images)


def test_missing_data_does_not_crash(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"steps": 0, "eval": {}}))
    page = write_report([run], tmp_path / "bare.html").read_text(encoding="utf-8")
    assert "bare" in page and "data:image/png" not in page and "<pre>" not in page


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_non_run_dir_raises(tmp_path, make):
    path = tmp_path / "not_a_run"
    if make == "empty":
        path.mkdir()
        (path / "notes.txt").write_text("hi")
    elif make == "file":
        path.write_text("hi")
    with pytest.raises(RetortError, match=re.escape(str(path))):
        write_report([path], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_demo_rows_name_their_run_dirs(tmp_path):
    import json

    from retort.report import write_report

    demo = tmp_path / "demo"
    (demo / "sft").mkdir(parents=True)
    (demo / "sft" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n')
    (demo / "sft" / "summary.json").write_text(json.dumps({"steps": 2, "train_time_s": 12.5, "eval": {}}))
    (demo / "results.json").write_text(json.dumps({"student: sft on teacher traces": {
        "accuracy": 0.8, "mean_tokens": 20.0, "n": 10, "run_dir": "sft"}}))
    html = write_report([demo], tmp_path / "r.html").read_text()
    assert "12.5" in html  # the row's train time came from the named run dir


def test_eval_json_file_loads_one_row_per_label(tmp_path):
    # What `retort eval --json out.json -m teacher -m student` writes: label -> evaluate() result.
    results = {"builtin:teacher": _eval(0.98, 41.0, params=1_200_000, **{"pass@8": 1.0}),
               "runs/sft/model": _eval(0.47, 12.5, params=350_000)}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(results))
    rows, runs = load_inputs([path])
    assert [r.name for r in rows] == list(results) and runs == []
    assert [r.params for r in rows] == [1_200_000, 350_000]
    assert rows[1].eval["accuracy"] == 0.47
    page = write_report([path], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "98.0%" in page and "47.0%" in page and "1.2M" in page and "350K" in page
    # `retort report eval.json` with no --out writes report.html beside it
    from retort.cli import main

    assert main(["report", str(path)]) == 0 and (tmp_path / "report.html").is_file()


@pytest.mark.parametrize("content", ["[1, 2]", "{}", '{"a": 0.5}', '{"a": {"loss": 1.0}}',
                                     "not json"])
def test_eval_json_of_wrong_shape_raises(tmp_path, content):
    path = tmp_path / "other.json"
    path.write_text(content)
    with pytest.raises(RetortError, match=re.escape(str(path))) as info:
        load_inputs([path])
    if content != "not json":
        assert "retort eval --json" in str(info.value)


def test_run_row_takes_params_from_summary(tmp_path):
    run = _run_dir(tmp_path / "sft")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "params": 2_500_000}))
    rows, _ = load_inputs([run])
    assert rows[0].params == 2_500_000
    assert "2.5M" in write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")


def test_wide_tables_sit_in_a_scroll_container(tmp_path):
    run = _run_dir(tmp_path / ("a_very_long_run_directory_name_" * 6))
    page = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    tables = page.count("<table>")
    assert tables >= 3  # comparison, difficulty, runs
    assert page.count('<div class="scroll">\n<table>') == tables
    css = re.search(r"<style>(.*)</style>", page, re.S).group(1)
    assert re.search(r"\.scroll\s*{[^}]*overflow-x:\s*auto", css)
    assert re.search(r"td\.path\s*{[^}]*word-break:\s*break-all", css)
    assert f'<td class="path">{run}</td>' in page


def test_difficulty_table_skips_none_key(tmp_path):
    run = _run_dir(tmp_path / "nodiff")
    summary = json.loads((run / "summary.json").read_text())
    summary["eval"]["by_difficulty"] = {"None": 0.5}  # a task whose examples have no difficulty
    (run / "summary.json").write_text(json.dumps(summary))
    page = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "difficulty None" not in page and "Accuracy by difficulty" not in page
    summary["eval"]["by_difficulty"] = {"None": 0.5, "2": 1.0}
    (run / "summary.json").write_text(json.dumps(summary))
    page = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "difficulty 2" in page and "difficulty None" not in page


def test_scatter_labels_never_overlap():
    from retort.report import plots

    # Coincident and near-coincident points, plus a far one and a long name.
    points = [("student: sft on worked solutions", 26.0, 0.56),
              ("student: sft on teacher traces", 26.0, 0.56),
              ("student: answers only", 26.2, 0.561), ("student: kd", 25.9, 0.559),
              ("student: _hidden $x$", 26.1, 0.56), ("teacher (built-in)", 40.0, 0.99)]
    fig, labels = plots.scatter_figure(points)
    fig.canvas.draw()  # where they are when saved
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert len(boxes) == len(points)
    boxes.append(fig.axes[0].get_legend().get_window_extent(renderer))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    legend = fig.axes[0].get_legend()
    assert legend is not None
    texts = [t.get_text() for t in legend.get_texts()]
    # each on-plot label is a number that the legend maps to the full name
    for i, ((name, _, _), label) in enumerate(zip(points, labels), 1):
        assert label.get_text() == str(i)
        assert texts[i - 1].startswith(f"{i}") and plots._label(name).strip() in texts[i - 1]
    assert plots.accuracy_vs_tokens(points).startswith("data:image/png;base64,")


def test_fidelity_columns_appear_when_an_eval_measured_them(tmp_path):
    # `retort eval --fidelity-to teacher`: the other rows carry their agreement with the teacher
    results = {"teacher": _eval(0.98, 41.0),
               "sft": _eval(0.47, 12.5, fidelity_to="teacher", agree_answer=0.5, agree_top1=0.875,
                            kl_ref_model=0.0123)}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(results))
    page = write_report([path], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "same answer as ref" in page and "50.0%" in page and "87.5%" in page and "0.012" in page
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"teacher": _eval(0.98, 41.0)}))
    assert "same answer as ref" not in write_report([plain], tmp_path / "p.html").read_text(encoding="utf-8")


def _track_run(path, track, task, result, method="m"):
    """A run directory of any track, as `retort train track=TRACK` leaves it."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"track: {track}\nmethod: {method}\ntask:\n  name: {task}\n")
    (path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    (path / "summary.json").write_text(json.dumps({"steps": 1, "train_time_s": 3.0, "eval": result}))
    return path


def _comparison_tables(page):
    """The comparison section's tables: (header cells, the first cell of each body row)."""
    section = page.split("<h2>Comparison</h2>", 1)[1].split("<h2>", 1)[0]
    tables = []
    for t in re.findall(r"<table>(.*?)</table>", section, re.S):
        trs = re.findall(r"<tr>(.*?)</tr>", t, re.S)
        tables.append((re.findall(r"<th>(.*?)</th>", trs[0]), [re.findall(r"<td[^>]*>(.*?)</td>", tr)[0]
                                                               for tr in trs[1:]]))
    return tables


def test_every_input_of_every_track_appears_in_its_kinds_table(tmp_path):
    """Diffusion runs, classifier runs and eval files, and an LM eval file in one report: each input's
    rows in the comparison table of its kind (once only the generators' table was shown), under a
    heading naming the kind."""
    points = {"swd": 0.1, "swd_ratio": 1.4, "mmd2": 0.001, "modes_covered": 8, "modes": 8, "recall": 1.0,
              "precision": 0.98, "variance_ratio": 1.0, "nfe": 1}
    classifier = {"accuracy": 0.93, "n": 359, "ece": 0.02, "nll": 0.2, "split": "test", "task": "digits"}
    inputs = [
        _track_run(tmp_path / "dmd2-ring", "diffuse", "ring", points),
        _track_run(tmp_path / "ring-teacher", "diffuse", "ring", {}),  # a run with no evaluation yet
        _track_run(tmp_path / "dmd2-digits", "diffuse", "digits", {"nonfinite": 1.0}),  # its samples all NaN
        _track_run(tmp_path / "ce-digits", "classify", "digits", classifier),
        _track_run(tmp_path / "kd-digits", "classify", "digits", {**classifier, "accuracy": 0.95}),
    ]
    lm = tmp_path / "lm-eval.json"
    lm.write_text(json.dumps({"sft student": _eval(0.47, 12.5), "answers student": _eval(0.2, 3.0)}))
    cls = tmp_path / "cls-eval.json"
    cls.write_text(json.dumps({"resnet8": {**classifier, "accuracy": 0.9}}))
    gen = tmp_path / "gen-eval.json"
    gen.write_text(json.dumps({"teacher (exact), 35 NFE": {**points, "nfe": 35, "task": "ring"},
                               "cd, 2 NFE": {**points, "nfe": 2, "task": "ring"}}))
    page = write_report([*inputs, lm, cls, gen], tmp_path / "r.html").read_text(encoding="utf-8")
    kinds = {"diffuse": "NFE", "classify": "ECE", "lm": "mean tokens / answer"}
    expect = {"diffuse": {"dmd2-ring", "ring-teacher", "dmd2-digits (100.0% of samples not finite)",
                          "teacher (exact), 35 NFE", "cd, 2 NFE"},
              "classify": {"ce-digits", "kd-digits", "resnet8"},
              "lm": {"sft student", "answers student"}}
    tables = _comparison_tables(page)
    for track, names in expect.items():
        shown = {name for headers, first in tables if kinds[track] in headers for name in first}
        assert shown == {html.escape(n) for n in names}, track
    assert "Generators (track=diffuse, 5 model(s))" in page and "Classifiers (track=classify, 3 model(s))" in page
    assert "Language models (track=lm, 2 model(s))" in page
    # the digits run (no metrics) sits in the images table, the ring runs in the points table
    assert any("FD" in h and first == ["dmd2-digits (100.0% of samples not finite)"] for h, first in tables)


@pytest.mark.parametrize("track", ["lm", "classify", "diffuse"])
def test_a_tracks_comparison_shows_every_row_it_is_given(track):
    """The report contract: a track's sections show each of its rows, with or without metrics."""
    from retort.report import Row
    from retort.track import track_report

    rows = [Row(name="not evaluated yet", eval={}), Row(name="odd one", eval={"loss": 1.0})]
    parts = track_report(track).sections(rows, [])
    comparison = "\n".join(parts.comparison)
    assert all(r.name in comparison for r in rows)


def test_a_single_track_page_has_no_kind_heading(tmp_path):
    page = write_report([_run_dir(tmp_path / "sft")], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "(track=" not in page


def test_a_run_evaluated_once_shows_its_value_not_a_one_point_curve(tmp_path):
    once = _run_dir(tmp_path / "once", eval_rows=False)
    with open(once / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 20, "eval/n": 200, "eval/accuracy": 0.375}) + "\n")
    page = write_report([once], tmp_path / "r.html").read_text(encoding="utf-8")
    assert len(_images(page)) == 2  # the loss curve and accuracy-vs-tokens; no evaluation "curve"
    assert "Evaluated once during training (no curve): once: accuracy 0.3750 at step 20" in page
    twice = _run_dir(tmp_path / "twice")
    page = write_report([once, twice], tmp_path / "r2.html").read_text(encoding="utf-8")
    assert len(_images(page)) == 3  # twice's curve is drawn, once is named as text
    assert "once: accuracy 0.3750 at step 20" in page and "twice: accuracy" not in page


def test_a_model_given_as_its_run_dir_and_in_an_eval_json_is_one_row(tmp_path):
    run = _run_dir(tmp_path / "sft")
    (run / "model").mkdir()
    same = tmp_path / "eval.json"  # `retort eval -m RUN/model --json eval.json`: the run's final eval's setup
    same.write_text(json.dumps({str(run / "model"): _eval(0.6, 20.0, params=350_000,
                                                          model=str(run / "model"))}))
    rows, runs = load_inputs([run, same])
    assert [r.name for r in rows] == ["sft"] and len(runs) == 1
    assert "tokens / s" not in write_report([run], tmp_path / "r0.html").read_text(encoding="utf-8")
    assert rows[0].eval["accuracy"] == 0.6 and rows[0].train_time == 130.6  # the JSON's numbers, the run's time
    # the label need not be the path: model_dir (what `retort eval` records) says which model it was
    labelled = tmp_path / "labelled.json"
    labelled.write_text(json.dumps({"student": _eval(0.6, 20.0, model_dir=str((run / "model").resolve()))}))
    assert [r.name for r in load_inputs([run, labelled])[0]] == ["sft"]
    # evaluated on other prompts: two rows, each saying how its evaluation differs
    other = tmp_path / "other.json"
    other.write_text(json.dumps({str(run / "model"): {**_eval(0.6, 20.0), "n": 50}}))
    rows, _ = load_inputs([run, other])
    assert sorted(r.name for r in rows) == ["sft [other.json: n=50]", "sft [run's eval: n=200]"]
    page = write_report([run, other], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "sft [other.json: n=50]" in page
    speed = tmp_path / "speed.json"  # `retort eval` measures tokens/s: the report shows it
    speed.write_text(json.dumps({"student": _eval(0.6, 20.0, tokens_per_s=123.4)}))
    page = write_report([speed], tmp_path / "r3.html").read_text(encoding="utf-8")
    assert "tokens / s" in page and "123.4" in page
    # another model in the same JSON stays its own row
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({str(run / "model"): _eval(0.6, 20.0), "builtin:teacher": _eval(0.9, 30.0)}))
    assert [r.name for r in load_inputs([run, mixed])[0]] == ["sft", "builtin:teacher"]

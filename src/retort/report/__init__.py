"""`write_report`: run directories (or eval result files) in, one self-contained HTML file out.

This module owns reading the inputs: training run dirs (config.yaml, metrics.jsonl, summary.json),
demo dirs (results.json plus training-run subdirs) and `retort eval --json` files (label -> eval
result), turning them into `Row`s (one per model in the comparison table) and `Run`s (one per
training curve). Rendering lives in `html.py`, figures in `plots.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RetortError
from ..paths import atomic_write_text, output_file

__all__ = ["write_report", "load_inputs", "Row", "Run", "ReportParts"]

RUN_FILES = ("summary.json", "metrics.jsonl")
EVAL_JSON_SHAPE = "an object of label -> eval results, as `retort eval --json` writes"


@dataclass
class ReportParts:
    """What a track adds to the page for its rows: under "Comparison" (caption, tables), the
    detail sections after it (figures, breakdowns), and sections at the end (samples). `title`
    names the kind of model ("Classifiers"): the heading of the track's part of the comparison
    when a report holds several tracks (none with one, so a single track's page is unchanged).
    A track's comparison shows every row it is given."""

    comparison: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    end: list[str] = field(default_factory=list)
    title: str = ""


@dataclass
class Run:
    """One training run directory: what its loss curve and train time come from."""

    name: str
    path: Path
    config: dict = field(default_factory=dict)
    train: list[dict] = field(default_factory=list)  # metrics rows that have a loss
    evals: list[dict] = field(default_factory=list)  # metrics rows that have eval/accuracy
    summary: dict = field(default_factory=dict)

    @property
    def steps(self):
        if isinstance(self.summary.get("steps"), int):
            return self.summary["steps"]
        steps = [r["step"] for r in self.train + self.evals if isinstance(r.get("step"), int)]
        return max(steps) if steps else None


@dataclass
class Row:
    """One model in the comparison table."""

    name: str
    eval: dict = field(default_factory=dict)
    params: int | None = None
    run: Run | None = None
    source: str = ""  # the input dir it came from, to tell apart rows with the same name
    track: str | None = None  # the track of the model: its run's config, else the one that claims its result

    @property
    def train_time(self):
        return self.run.summary.get("train_time_s") if self.run else None

    @property
    def steps(self):
        return self.run.steps if self.run else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError) as e:
        raise RetortError(f"{path}: not valid JSON ({e})") from None


def _read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    train, evals = [], []
    if not path.is_file():
        return train, evals
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        # A crash mid-write leaves a truncated last line; the rows before it are still good.
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict):
            continue
        if "loss" in row:
            train.append(row)
        if "eval/accuracy" in row:
            evals.append(row)
    return train, evals


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except yaml.YAMLError as e:
        raise RetortError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return config if isinstance(config, dict) else {}


def _is_run(path: Path) -> bool:
    return any((path / f).is_file() for f in RUN_FILES)


def _load_run(path: Path, name: str) -> Run:
    summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    train, evals = _read_metrics(path / "metrics.jsonl")
    return Run(name=name, path=path, config=_read_config(path / "config.yaml"), train=train,
               evals=evals, summary=summary if isinstance(summary, dict) else {})


def _run_row(run: Run, source: str) -> Row:
    result = run.summary.get("eval")
    result = dict(result) if isinstance(result, dict) else {}
    if not result and run.evals:
        # No final eval in summary.json (still training, or crashed): the last logged one stands in.
        last = run.evals[-1]
        result = {k.removeprefix("eval/"): v for k, v in last.items() if k.startswith("eval/")}
    private = run.summary.get("privacy")
    if isinstance(private, dict) and "epsilon" in private:  # trained under DP-SGD (privacy.*)
        result.setdefault("epsilon", private["epsilon"])
    return Row(name=run.name, eval=result, run=run, source=source, track=_config_track(run),
               params=_int_or_none(run.summary.get("params")))


def _config_track(run: Run) -> str | None:
    return run.config.get("track") if isinstance(run.config.get("track"), str) else None


def _int_or_none(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _result_rows(results: dict, source: str) -> list[Row]:
    """One row per label of a label -> eval result object (results.json, `retort eval --json`)."""
    rows = []
    for label, result in results.items():
        result = result if isinstance(result, dict) else {}
        rows.append(Row(name=str(label), eval=result, source=source,
                        params=_int_or_none(result.get("params"))))
    return rows


def _load_eval_json(path: Path, source: str) -> list[Row]:
    results = _read_json(path)
    # Every track's evaluation result is one its report module claims; anything else is some other JSON file, and
    # a table of "-" rows would hide that.
    if not (isinstance(results, dict) and results and
            all(isinstance(r, dict) and _claimed(r) for r in results.values())):
        raise RetortError(f"{path}: not eval results (expected {EVAL_JSON_SHAPE})")
    return _result_rows(results, source)


def _norm(label: str) -> str:
    return label.lower().replace(" ", "_")


def _match(label_names: list[str], subdir: str, taken: set[str]) -> str | None:
    """The label that names `subdir` ("student: answers only" <-> answers_only), or None."""
    sub = subdir.lower()
    found = [l for l in label_names if l not in taken and _norm(l).endswith(sub)
             and (len(_norm(l)) == len(sub) or not _norm(l)[-len(sub) - 1].isalnum())]
    return min(found, key=len) if found else None


def _load_demo(path: Path, source: str) -> tuple[list[Row], list[Run]]:
    results = _read_json(path / "results.json")
    if not isinstance(results, dict):
        raise RetortError(f"{path / 'results.json'}: expected a JSON object of label -> results")
    rows = _result_rows(results, source)
    by_label = {r.name: r for r in rows}
    runs, taken = [], set()
    # Longest names first, so "traces" cannot take the label that "sft_on_teacher_traces" names.
    subdirs = sorted((d for d in path.iterdir() if d.is_dir() and _is_run(d)),
                     key=lambda d: (-len(d.name), d.name))
    # A result may name its training run's subdirectory ("run_dir", as `retort demo` writes).
    named = {r.eval.get("run_dir"): r.name for r in rows if isinstance(r.eval.get("run_dir"), str)}
    for sub in subdirs:
        label = named.get(sub.name) or _match(list(by_label), sub.name, taken)
        run = _load_run(sub, label or sub.name)
        if label is not None:
            taken.add(label)
            by_label[label].run = run
            by_label[label].track = _config_track(run)
        runs.append(run)
    runs.sort(key=lambda r: r.path.name)
    return rows, runs


# what makes two evaluations of one model comparable: the same prompts, read the same way
EVAL_SETUP = ("task", "split", "n", "answer_format", "stop", "k", "temperature")


def _model_dir(row: Row) -> Path | None:
    """The model directory an eval-JSON row evaluated (`model_dir`, or a label that is a path)."""
    for name in (row.eval.get("model_dir"), row.eval.get("model"), row.name):
        if isinstance(name, str) and name and Path(name).is_dir():
            return Path(name).resolve()
    return None


def _merge_same_models(rows: list[Row]) -> list[Row]:
    """A model given both as its run directory and in an eval JSON (`retort eval -m RUN/model`) is
    one row: the run's (curves, train time) with the eval JSON's result, when both evaluations
    had the same setup (`EVAL_SETUP`). When they differ, both rows stay and their names say how
    ("sft [run's eval: n=50]", "sft [eval.json: n=200]")."""
    by_dir = {(r.run.path / "model").resolve(): r for r in rows if r.run is not None and (r.run.path / "model").is_dir()}
    if not by_dir:
        return rows
    out, merged = [], set()
    for row in rows:
        if row.run is not None:
            out.append(row)
            continue
        run_row = by_dir.get(_model_dir(row))
        if run_row is None or id(run_row) in merged:
            out.append(row)
            continue
        differ = [k for k in EVAL_SETUP if run_row.eval.get(k) != row.eval.get(k)
                  and run_row.eval.get(k) is not None and row.eval.get(k) is not None]
        if not differ:
            run_row.eval = {**run_row.eval, **row.eval}
            run_row.params = run_row.params if run_row.params is not None else row.params
            merged.add(id(run_row))
            continue
        say = lambda r: ", ".join(f"{k}={r.eval.get(k)}" for k in differ)  # noqa: E731
        label = row.name
        row.name = f"{run_row.name} [{Path(row.source).name}: {say(row)}]"
        run_row.name = f"{run_row.name} [run's eval: {say(run_row)}]"
        row.eval = {**row.eval, "label": label}
        merged.add(id(run_row))
        out.append(row)
    return out


def _dedupe(items, source_of) -> None:
    seen: dict[str, int] = {}
    for item in items:
        seen[item.name] = seen.get(item.name, 0) + 1
    for item in items:
        if seen[item.name] > 1:
            item.name = f"{item.name} ({source_of(item)})"


def load_inputs(run_dirs) -> tuple[list[Row], list[Run]]:
    """Read every input (run dir, demo dir or `retort eval --json` file); rows for the table, runs
    for the curves (names made unique)."""
    rows: list[Row] = []
    runs: list[Run] = []
    for entry in run_dirs:
        path = Path(entry)
        if path.suffix.lower() == ".json" and not path.is_dir():
            if not path.is_file():
                raise RetortError(f"{entry}: no such file (expected {EVAL_JSON_SHAPE})")
            new_rows, new_runs = _load_eval_json(path, str(entry)), []
        elif not path.is_dir():
            raise RetortError(f"{entry}: no such directory (expected a retort run directory, or a "
                              f"JSON file that `retort eval --json` wrote)")
        elif (path / "results.json").is_file():
            new_rows, new_runs = _load_demo(path, str(entry))
        elif _is_run(path):
            run = _load_run(path, path.resolve().name)
            new_rows, new_runs = [_run_row(run, str(entry))], [run]
        else:
            raise RetortError(f"{entry}: not a retort run (expected summary.json, metrics.jsonl "
                              f"or results.json)")
        rows += new_rows
        runs += new_runs
    rows = _merge_same_models(rows)
    _dedupe(rows, lambda r: r.source)
    for row in rows:
        if row.run is not None:
            row.run.name = row.name
        if row.track is None:
            row.track = _track_of(row.eval)
    _dedupe(runs, lambda r: r.path)
    return rows, runs


def _track_of(result: dict) -> str:
    """The track whose report module claims an eval result; the default track when none does (a
    result with no metrics, e.g. a run that has not evaluated yet). The default track is asked
    last: its claim is the broadest (any result with an accuracy), the others' are specific."""
    from ..track import DEFAULT_TRACK, TRACKS, track_report

    for name in sorted(TRACKS, key=lambda n: n == DEFAULT_TRACK):
        module = track_report(name)
        if module is not None and module.claims(result):
            return name
    return DEFAULT_TRACK


def _claimed(result: dict) -> bool:
    from ..track import TRACKS, track_report

    return any(track_report(n) is not None and track_report(n).claims(result) for n in TRACKS)


def track_parts(rows, runs) -> list[ReportParts]:
    """The rows grouped by their track (`Row.track`), each group with its track's sections, in the
    order each track's first row came: every input's rows appear, one comparison per kind of model.
    With several groups each comparison is headed by its kind."""
    from ..track import DEFAULT_TRACK, TRACKS, track_report
    from .html import esc, generic_table

    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.track or DEFAULT_TRACK, []).append(row)
    parts = []
    for name, group in groups.items():
        module = track_report(name) if name in TRACKS else None
        mine = [run for run in runs if any(r.run is run for r in group)]
        part = module.sections(group, mine) if module is not None else \
            ReportParts(comparison=[generic_table(group)])
        if len(groups) > 1:
            part.comparison.insert(0, f"<h3>{esc(part.title or 'Models')} (track={esc(name)}, "
                                      f"{len(group)} model(s))</h3>")
        parts.append(part)
    return parts


def write_report(run_dirs, out, title: str = "retort report") -> Path:
    """Write one self-contained HTML report comparing `run_dirs` to `out`; returns its path."""
    from .html import render

    if not run_dirs:
        raise RetortError("report: no run directories given")
    out = output_file(out, "report -o")  # before reading anything
    from ..audit import read_results
    from .privacy import privacy_section

    audits = {str(d): read_results(d) for d in run_dirs if str(d).lower().endswith(".json") and Path(d).is_file()}
    audits = {d: r for d, r in audits.items() if r is not None}  # `retort audit --out` files
    rows, runs = load_inputs([d for d in run_dirs if str(d) not in audits])
    parts = track_parts(rows, runs)
    privacy = privacy_section(rows, runs, audits)
    if privacy:
        parts.append(ReportParts(details=privacy))
    page = render(rows, runs, title=title, inputs=[str(d) for d in run_dirs], parts=parts)
    atomic_write_text(out, page)
    return out

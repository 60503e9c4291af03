"""The Python API: what the commands do, from a notebook or a script, with the same typed configs
and the same results (the commands are a thin layer over these functions).

    import retort
    run = retort.train_config(track="classify", task={"name": "digits"}, method="kd", out="runs/kd")
    summary = retort.train(run)                          # or retort.train(track="classify", ...)
    results = retort.evaluate(["teacher=builtin:teacher", "kd=runs/kd/model"], track="classify",
                              task={"name": "digits"}, fidelity_to="teacher")
    retort.report(["runs/kd"], "runs/report.html")

Every function takes a config the way the commands do: an optional YAML file (`config_file`), dotted
`overrides` (`["train.lr=1e-4"]`) and keyword arguments, sections as dicts (`train={"lr": 1e-4}`),
the last winning. `track=` picks the family of students (`retort.track.TRACKS`). Errors are
`retort.errors.RetortError` with the same one-line messages the commands print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .config import load_config, peek_track
from .track import DEFAULT_TRACK, get_track


def _track_name(config_file, overrides, fields) -> str:
    if "track" in fields:
        return str(fields["track"])
    return peek_track(config_file, list(overrides or []), DEFAULT_TRACK)


def _load(kind: str, config_file, overrides, fields):
    track = get_track(_track_name(config_file, overrides, fields))
    classes = track.config_classes()
    if kind not in classes:
        from .errors import ConfigError

        raise ConfigError(f"track={track.name} has no `{kind}` config ({', '.join(classes)})")
    return track, load_config(classes[kind], config_file, list(overrides or []), values=fields or None)


def train_config(config_file: Optional[str] = None, overrides: Sequence[str] = (), **fields):
    """The typed run config `retort train` would read (a dataclass: inspect it, `dataclasses.replace` it)."""
    return _load("train", config_file, overrides, fields)[1]


def train(run=None, *, resume: bool = False, console=None, announce_new: bool = False,
          config_file: Optional[str] = None, overrides: Sequence[str] = (), **fields) -> dict:
    """`retort train`: train `run` (a config from `train_config`, else built from the arguments);
    returns the summary (also in `run.out`/summary.json)."""
    from .train import train as run_train

    if run is None:
        run = train_config(config_file, overrides, **fields)
    elif config_file or overrides or fields:
        raise TypeError("train(run, ...): give a run config or config arguments, not both")
    track = get_track(run.track)
    return run_train(run, resume=resume, evaluate=track.train_evaluator(run), console=console,
                     announce_new=announce_new)


def eval_config(config_file: Optional[str] = None, overrides: Sequence[str] = (), **fields):
    """The typed config `retort eval` would read."""
    return _load("eval", config_file, overrides, fields)[1]


def evaluate(models: Sequence[str] = (), *, run=None, console=None, config_file: Optional[str] = None,
             overrides: Sequence[str] = (), json_out: Optional[str] = None, fidelity_to: Optional[str] = None,
             options: Optional[dict] = None, **fields) -> dict:
    """`retort eval`: `models` ("LABEL=PATH" or a name, as `-m` takes) side by side; returns label ->
    result (written to `json_out`, else `run.out`, when given). `options`: the track's eval options
    (`retort eval --help`), by their Python names (`{"hybrid": 1}`, `{"provenance": "T,S"}`)."""
    from . import threads
    from .options import targets
    from .paths import atomic_write_text, output_file

    if run is None:
        track, run = _load("eval", config_file, overrides, fields)
    else:
        track = get_track(getattr(run, "track", DEFAULT_TRACK))
    threads.pin(run.threads)
    out = json_out or run.out
    if out:
        output_file(out, "--json" if json_out else "out=")  # checked before any work
    if console is None:  # the track prints its table: to nowhere, unless asked
        from rich.console import Console

        console = Console(quiet=True)
    results = track.evaluate(run, targets(models), {"fidelity_to": fidelity_to, **(options or {})}, console)
    if out:
        atomic_write_text(out, track.results_json(results))
        console.print(f"results: {out}")
    return results


def audit(models: Sequence[str] = (), *, canaries: Optional[str] = None, members: Optional[str] = None,
          nonmembers: Optional[str] = None, reference: Optional[str] = None, n: int = 1000,
          max_exact: int = 10 ** 6, samples: int = 10 ** 5, seed: int = 0, out: Optional[str] = None,
          console=None, config_file: Optional[str] = None, overrides: Sequence[str] = (), **fields) -> dict:
    """`retort audit`: canary exposure (`canaries`: a manifest `canaries()` wrote) and membership
    inference (members vs non-members; `reference`: a model, or "teacher", that calibrates the
    attack) of each model in `models` (-m values: a run directory or a model); returns label ->
    result (`retort.audit`). Written to `out`, else each run directory's audit.json."""
    from . import threads
    from .audit import AUDIT_FILE, write_results
    from .options import targets
    from .paths import output_file

    track, run = _load("eval", config_file, overrides, fields)
    threads.pin(run.threads)
    if out:
        output_file(out, "--out")  # checked before any work
    if console is None:
        from rich.console import Console

        console = Console(quiet=True)
    options = {"canaries": canaries, "members": members, "nonmembers": nonmembers, "reference": reference, "n": n,
               "max_exact": max_exact, "samples": samples, "seed": seed}
    results = track.audit(run, targets(models), options, console)
    if out:
        write_results(out, results)
        console.print(f"audit: {out}")
    for label, result in results.items():
        if not out and result.get("run_dir"):
            write_results(Path(result["run_dir"]) / AUDIT_FILE, {label: result})
            console.print(f"audit: {Path(result['run_dir']) / AUDIT_FILE}")
    return results


def canaries(out: str, format: str, length: int, *, alphabet: str = "0123456789", repeats: Sequence[int] = (1, 5, 20),
             per_repeat: int = 1, controls: int = 1, source: Optional[str] = None, field: str = "text",
             row: Optional[dict] = None, seed: int = 0, manifest: Optional[str] = None) -> dict:
    """`retort audit canaries`: `source`'s records (or none) with canaries of `format` inserted
    `repeats` times each, written to `out`, and their manifest; returns the manifest."""
    from .audit import CanaryFormat, write_corpus

    return write_corpus(out, CanaryFormat(format, length, alphabet), repeats=list(repeats), per_repeat=per_repeat,
                        controls=controls, source=source, field=field, row=row, seed=seed, manifest=manifest)


def teacher_config(config_file: Optional[str] = None, overrides: Sequence[str] = (), **fields):
    """The run config `retort teacher` trains the built-in teacher with."""
    track = get_track(_track_name(config_file, overrides, fields))
    return track.teacher_config(config_file, _with_fields(overrides, fields))


def teacher(config_file: Optional[str] = None, overrides: Sequence[str] = (), *, force: bool = False,
            console=None, **fields) -> Path:
    """`retort teacher`: the built-in teacher's model directory (trained first, unless cached)."""
    track = get_track(_track_name(config_file, overrides, fields))
    return track.ensure_teacher(config_file, _with_fields(overrides, fields), force=force, console=console)


def _with_fields(overrides, fields) -> list[str]:
    """Keyword arguments as dotted overrides (the teacher configs take overrides only)."""
    import json

    out = list(overrides or [])

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            out.append(f"{prefix[:-1]}={json.dumps(value) if not isinstance(value, str) else value}")
    walk("", fields)
    return out


def demo(track: str = DEFAULT_TRACK, out: Optional[str] = None, methods: Optional[Sequence[str]] = None,
         seed: int = 0, console=None, real: Optional[str] = None) -> dict:
    """`retort demo --track TRACK`: the track's embedded default end to end; returns its results. The
    demo directory is held (`retort.lock`) for the whole demo: a second demo into it is refused.
    `real="full"|"tiny"` (`retort demo --real`): the language-model track's real-model demo instead
    (`retort.lm.demo_real`: packaged Qwen teacher, SmolLM2 students) at that size."""
    from .lock import hold

    t = get_track(track)
    if real is not None:
        from .errors import ConfigError

        if not getattr(t, "real_demo_out", None) or methods:
            raise ConfigError("demo --real: the language-model track's real-model demo (no --track other than lm, "
                              "no --methods: it trains sft and cross-tokenizer kd)")
        with hold(out or t.real_demo_out, "demo --out"):
            return t.demo(out or t.real_demo_out, console=console, seed=seed, real=real)
    with hold(out or t.demo_out, "demo --out"):
        return t.demo(out or t.demo_out, console=console, methods=list(methods) if methods else None, seed=seed)


def report(inputs: Sequence[str], out: Optional[str] = None, title: str = "retort report") -> Path:
    """`retort report`: one self-contained HTML page for run directories, demo directories and
    `retort eval --json` files; `out` defaults to report.html in (or beside) the first input."""
    from .report import write_report

    first = Path(inputs[0])
    default = first.with_name("report.html") if first.is_file() else first / "report.html"
    return write_report(list(inputs), out or str(default), title=title)


def methods(track: str = DEFAULT_TRACK) -> dict:
    """name -> method class of a track (`retort methods`)."""
    return dict(get_track(track).methods)

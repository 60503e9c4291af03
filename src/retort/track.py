"""Tracks: a family of students (language models, classifiers, diffusion models, or one of your
own) as one package that the shared core (config, the training loop, checkpoints, losses, the
commands, the report) drives through the `Track` interface below. The core never imports a track
(an import-linter contract checks it) and names none: it finds one by name in `TRACKS`, the one
place that knows where tracks live, and a new track is added with `register`.

A registered track is three modules, loaded only when used:
- `track`: defines `TRACK`, a `Track` (below): the methods, configs and what every command does;
- `cli` (optional, imports click only, so `retort --help` stays fast): `COMMANDS` (commands only this
  track has, name -> click command), `EVAL_OPTIONS` (click options `retort eval` adds for it),
  `DEMO_METHODS` (one line for `retort demo --help`);
- `report` (optional, imports no torch): `sections(rows, runs) -> ReportParts`, the HTML the report
  shows for this track's rows.

What a `Track` provides (every member below has a default or must be given; README "Adding a
track" lists them, and a test checks the two agree):

| piece | what the core does with it |
|---|---|
| `methods` | name -> method class (`retort.contract.Method`); `method=` picks one |
| `run_config`, `eval_config` | the configs `retort train` / `retort eval` read for this track |
| `method_config(run)` | the method's typed options (`method_args`), checked |
| `get_task(cfg)`, `check_eval(task, run)` | the run's task; refuse an evaluation with nothing to evaluate, before step 0 |
| `load_student(run, ckpt, seed)` | the model being trained (from a checkpoint's `model/` when resuming) and its processor |
| `param_counts(model)`, `rows_per_batch(run)`, `describe_student(...)` | trainable / all parameters; the work per micro-batch (the `threads` choice); a line for the user |
| `context(run, task, processor, device, say)` | what the track's methods are built from |
| `check_method(run, method)` | refuse, before step 0, what the method cannot do with this run |
| `save_checkpoint_model(...)`, `export(...)` | the model part of a checkpoint; the final model a user loads |
| `train_evaluator(run)` | the evaluation a training run does during and after training |
| `evaluate(run, targets, options, console)` | `retort eval`: the models side by side, printed; label -> result |
| `audit(run, targets, options, console)` | `retort audit`: canary exposure and membership inference per model (`retort.audit`) |
| `teacher_config(config_file, overrides)`, `ensure_teacher(...)` | `retort teacher`: the built-in teacher's run config; train it once and cache it |
| `demo(out, console, methods, seed)`, `demo_out` | `retort demo --track NAME` |
| `config_classes()` | command -> config class, for `retort config` |
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

DEFAULT_TRACK = "lm"  # what a config without `track=` means


@dataclass(frozen=True)
class TrackEntry:
    """Where a track lives: each field a module path, or the object itself (a track defined in a
    test or a notebook)."""

    track: Any                    # the module that defines TRACK (or the Track instance)
    summary: str = ""             # one line: what the track distils (`retort demo --help`)
    cli: Any = None               # optional: COMMANDS, EVAL_OPTIONS, DEMO_METHODS (click only)
    report: Any = None            # optional: sections(rows, runs) -> ReportParts (no torch)


TRACKS: dict[str, TrackEntry] = {
    "lm": TrackEntry("retort.lm.track", "reasoning language models on the built-in task", "retort.lm.cli",
                     "retort.lm.report"),
    "classify": TrackEntry("retort.classify.track", "classifiers on digits", "retort.classify.cli",
                           "retort.classify.report"),
    "diffuse": TrackEntry("retort.diffuse.track", "few-step generators on the 8-mode ring and digits",
                          "retort.diffuse.cli", "retort.diffuse.report"),
}


def register(name: str, entry: TrackEntry) -> None:
    """Add (or replace) a track: every command then accepts `track=NAME` / `--track NAME`."""
    TRACKS[name] = entry


def _module(x):
    return importlib.import_module(x) if isinstance(x, str) else x


def track_cli(name: str):
    """The track's CLI module (commands, eval options), or None."""
    entry = TRACKS[name]
    return _module(entry.cli) if entry.cli is not None else None


def track_report(name: str):
    """The track's report module, or None."""
    entry = TRACKS[name]
    return _module(entry.report) if entry.report is not None else None


class Track:
    """The interface; see the module docstring for what each piece is for."""

    name = "track"
    methods: dict = {}
    run_config: type = object   # the dataclass `retort train` reads for this track
    eval_config: type = object  # the dataclass `retort eval` reads for this track
    demo_out: str = "runs/demo"

    # ------------------------------------------------------------------ training
    def method_config(self, run):
        """The method's typed options: `method_args` merged into its Config dataclass by OmegaConf,
        which checks each value's type (`gate=maybe`, `beta=abc` and `top_k=10.5` are refused), then
        `build` checks the declared ranges and choices. One line names the key either way."""
        from omegaconf import OmegaConf
        from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

        from .config import build
        from .errors import ConfigError

        if run.method not in self.methods:
            raise ConfigError(f"method={run.method!r}: unknown; methods: {', '.join(self.methods)}")
        cls = self.methods[run.method].Config
        args = dict(run.method_args)
        try:
            typed = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(cls), args))
        except ConfigKeyError:
            typed = args  # `build` names the unknown key and the valid ones
        except OmegaConfBaseException as e:
            key = e.full_key or "?"
            msg = str(getattr(e, "msg", e)).splitlines()[0]
            raise ConfigError(f"method_args.{key}={args.get(key)!r}: {msg} (method {run.method})") from None
        return build(cls, {k: typed[k] for k in args}, "method_args.")

    def train_evaluator(self, run):
        """`evaluate(model, processor, task) -> dict` for a training run, or None."""
        return None

    def get_task(self, cfg):
        raise NotImplementedError

    def check_eval(self, task, run) -> None:
        """Refuse, before step 0, an evaluation with nothing to evaluate (default: accept)."""

    def load_student(self, run, ckpt, seed: int):
        raise NotImplementedError

    def param_counts(self, model) -> tuple[int, int]:
        params = list(model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def rows_per_batch(self, run) -> int:
        return run.train.batch_size

    def describe_student(self, run, trainable: int, total: int):
        """A line about the student for the user, or None (default)."""
        return None

    def context(self, run, task, processor, device, say):
        raise NotImplementedError

    def check_method(self, run, method) -> None:
        """Refuse, before step 0, what the method cannot do with this run (default: accept)."""

    def save_checkpoint_model(self, model, processor, path, state_dict=None) -> None:
        """`state_dict`: the full weights gathered from shards (FSDP), else None (use the model's)."""
        raise NotImplementedError

    def export(self, model, processor, path, state_dict=None) -> None:
        """The final model; `state_dict` as in `save_checkpoint_model`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the other commands
    def evaluate(self, run, targets: list, options: dict, console) -> dict:
        """`retort eval`: the models `targets` ([(label, name)]) side by side on `run` (an
        `eval_config`), the table printed on `console`; returns label -> result. `options` holds the
        values of the eval options this track's `cli.EVAL_OPTIONS` add (and `fidelity_to`)."""
        from .errors import ConfigError

        raise ConfigError(f"track={self.name}: no evaluation command")

    def audit(self, run, targets: list, options: dict, console) -> dict:
        """`retort audit`: what each model of `targets` ([(label, name)]; a name may be a run
        directory) leaks, on `run` (an `eval_config`); label -> result (`retort.audit`'s shape).
        `options`: canaries, members, nonmembers, reference, n, max_exact, samples, seed."""
        from .errors import ConfigError

        raise ConfigError(f"track={self.name}: no audit (language models and classifiers have one)")

    def results_json(self, results: dict) -> str:
        """How `retort eval --json` writes the results (indented JSON by default)."""
        import json

        return json.dumps(results, indent=2)

    def teacher_config(self, config_file=None, overrides=None):
        """The run config `retort teacher` trains the built-in teacher with (`retort config teacher`)."""
        from .errors import ConfigError

        raise ConfigError(f"track={self.name}: no built-in teacher")

    def ensure_teacher(self, config_file=None, overrides=None, *, force: bool = False, console=None) -> Path:
        """`retort teacher`: the built-in teacher's model directory, trained first if not cached."""
        from .errors import ConfigError

        raise ConfigError(f"track={self.name}: no built-in teacher")

    def demo(self, out: str, console=None, methods: Optional[list] = None, seed: int = 0) -> dict:
        """`retort demo --track NAME`: teacher, students, evaluation side by side, report."""
        from .errors import ConfigError

        raise ConfigError(f"track={self.name}: no demo")

    def config_classes(self) -> dict:
        """command -> the config class (or a function giving the config) `retort config` describes."""
        classes = {"train": self.run_config}
        if self.eval_config is not object:
            classes["eval"] = self.eval_config
        if type(self).teacher_config is not Track.teacher_config:
            classes["teacher"] = self.teacher_config
        return classes


def get_track(name: str) -> Track:
    from .errors import ConfigError

    if name not in TRACKS:
        raise ConfigError(f"track={name!r}: unknown; tracks: {', '.join(TRACKS)}")
    module = _module(TRACKS[name].track)
    return module if isinstance(module, Track) else module.TRACK


def method_config(run, track: Optional[Track] = None):
    """The typed options of `run.method` (`Track.method_config`), `track` defaulting to the run's."""
    return (track or get_track(run.track)).method_config(run)

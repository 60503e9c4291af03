"""Tracks: a family of students (language models, classifiers, diffusion models) as a package that
the shared core (config, the training loop, checkpoints, losses, CLI, report) drives through one
small interface. The core never imports a track (an import-linter contract checks it); it looks one
up by name here (`run.track`), the one place that knows where tracks live. `method_config` reads a
run's method options into the method's typed config, for the loop and for the tracks' calls of the
hooks a method answers before it is built (`retort.contract.Method`).

What a track provides (`Track`):

| piece | what the loop does with it |
|---|---|
| `methods` | name -> method class (`retort.contract.Method`); `method=` picks one, `method_config(run)` reads its options |
| `get_task(cfg)`, `check_eval(task, run)` | the run's task; refuse an evaluation with nothing to evaluate, before step 0 |
| `load_student(run, ckpt, seed)` | the model being trained (from a checkpoint's `model/` when resuming) and its processor (a tokenizer) |
| `param_counts(model)`, `rows_per_batch(run)` | trainable / all parameters; the work per micro-batch (the `threads` choice) |
| `context(run, task, processor, device, say)` | what the track's methods are built from (a `MethodContext`) |
| `check_method(run, method)` | refuse, before step 0, what the method cannot do with this run (a teacher without a capability) |
| `save_checkpoint_model(model, processor, path)`, `export(model, processor, path)` | the model part of a checkpoint; the final model a user loads |
| `run_config`, `train_evaluator(run)` | the run config `retort train track=NAME` reads; the evaluation it runs during and after training |
"""

from __future__ import annotations

import importlib

# track name -> the module that defines `TRACK` (imported on first use, so the core stays track-free)
TRACKS: dict[str, str] = {"lm": "retort.lm.track", "classify": "retort.classify.track",
                          "diffuse": "retort.diffuse.track"}


class Track:
    """The interface; see the module docstring for what each piece is for."""

    name = "track"
    methods: dict = {}
    run_config: type = object  # the dataclass `retort train` reads for this track

    def train_evaluator(self, run):
        """`evaluate(model, processor, task) -> dict` for a training run, or None."""
        return None

    def get_task(self, cfg):
        raise NotImplementedError

    def check_eval(self, task, run) -> None:
        pass

    def load_student(self, run, ckpt, seed: int):
        raise NotImplementedError

    def param_counts(self, model) -> tuple[int, int]:
        params = list(model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def rows_per_batch(self, run) -> int:
        return run.train.batch_size

    def describe_student(self, run, trainable: int, total: int):
        return None

    def context(self, run, task, processor, device, say):
        raise NotImplementedError

    def check_method(self, run, method) -> None:
        pass

    def save_checkpoint_model(self, model, processor, path, state_dict=None) -> None:
        """`state_dict`: the full weights gathered from shards (FSDP), else None (use the model's)."""
        raise NotImplementedError

    def export(self, model, processor, path, state_dict=None) -> None:
        """The final model; `state_dict` as in `save_checkpoint_model`."""
        raise NotImplementedError


def get_track(name: str) -> Track:
    from .errors import ConfigError

    if name not in TRACKS:
        raise ConfigError(f"track={name!r}: unknown; tracks: {', '.join(TRACKS)}")
    return importlib.import_module(TRACKS[name]).TRACK


def method_config(run, track: Track | None = None):
    """The method's typed options: `method_args` merged into its Config dataclass by OmegaConf,
    which checks each value's type (`gate=maybe`, `beta=abc` and `top_k=10.5` are refused), then
    `build` checks the declared ranges and choices. One line names the key either way."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    from .config import build
    from .errors import ConfigError

    track = track or get_track(run.track)
    if run.method not in track.methods:
        raise ConfigError(f"method={run.method!r}: unknown; methods: {', '.join(track.methods)}")
    cls = track.methods[run.method].Config
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

"""Typed run configs: dataclasses with documented, range-checked fields; YAML file + dotted overrides.

Every field is declared with `param(default, doc, lo=, hi=, choices=)`, so its documentation and its
allowed values live beside it and one validator checks them all, naming the dotted key. Parsing and
type coercion are OmegaConf's (`OmegaConf.structured` + `merge` + `from_dotlist`); this module only
turns its exceptions into one-line messages and writes the resolved config into run directories.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import ConfigError


def param(default, doc: str, *, lo=None, hi=None, lo_open=False, hi_open=False, choices=None):
    """A documented config field. `lo`/`hi` bound numbers (closed unless `*_open`), `choices` strings."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls, doc: str, **defaults):
    """A nested config section (with `defaults` overriding the section class's own)."""
    return field(default_factory=lambda: cls(**defaults), metadata={"doc": doc})


# --------------------------------------------------------------------------- the section every track shares


@dataclass
class OptimConfig:
    steps: int = param(1000, "optimizer steps", lo=1)
    batch_size: int = param(32, "micro-batch size per process", lo=1)
    grad_accum: int = param(1, "micro-batches per optimizer step", lo=1)
    optimizer: str = param("adamw", "the optimizer (retort.train.optim.OPTIMIZERS)", choices=["adamw", "sgd"])
    lr: float = param(1e-3, "peak learning rate", lo=0.0, hi=1.0, lo_open=True)
    min_lr_ratio: float = param(0.1, "final lr of the cosine decay, as a fraction of lr", lo=0.0, hi=1.0)
    warmup_steps: int = param(50, "linear warmup steps", lo=0)
    schedule: str = param("warmup_cosine", "lr schedule: linear warmup then cosine to min_lr_ratio, warmup then "
                          "x lr_gamma at each of `milestones` (the CIFAR KD recipe's step decay), or warmup then "
                          "constant (DMD2's)", choices=["warmup_cosine", "multistep", "constant"])
    milestones: List[int] = param([], "schedule=multistep: the optimizer steps at which the lr is multiplied by "
                                  "lr_gamma")
    lr_gamma: float = param(0.1, "schedule=multistep: the factor at each milestone", lo=0.0, hi=1.0, lo_open=True)
    weight_decay: float = param(0.01, "weight decay (AdamW's decoupled, SGD's L2) on weights of dimension >= 2 "
                                "(not biases or norms)", lo=0.0)
    beta1: float = param(0.9, "AdamW beta1", lo=0.0, hi=1.0, hi_open=True)
    beta2: float = param(0.99, "AdamW beta2", lo=0.0, hi=1.0, hi_open=True)
    momentum: float = param(0.9, "SGD momentum", lo=0.0, hi=1.0, hi_open=True)
    nesterov: bool = param(False, "SGD: Nesterov momentum")
    clip_grad: float = param(1.0, "max global grad norm (0 disables clipping)", lo=0.0)
    precision: str = param("auto", "auto = bf16 on GPUs that support it, else fp32", choices=["auto", "fp32", "bf16"])
    log_every: int = param(10, "steps between metrics lines", lo=1)
    eval_every: int = param(0, "steps between evaluations (0: only at the end)", lo=0)
    save_every: int = param(200, "steps between checkpoints (0: only at the end)", lo=0)
    keep_checkpoints: int = param(2, "checkpoints kept on disk", lo=1)
    log_with: str = param("none", "extra metrics sink", choices=["none", "tensorboard", "wandb"])
    stop_at_accuracy: float = param(0.0, "stop once periodic eval reaches this accuracy (0: never)", lo=0.0, hi=1.0)
    ema: float = param(0.0, "decay of an exponential moving average of the student's trainable weights, which "
                       "is what evaluation and the exported model use (0: none; LiveTalk 0.99, GDD ~0.9996)",
                       lo=0.0, hi=1.0, hi_open=True)
    ema_start: int = param(0, "train.ema: the average copies the weights up to this step and averages after it",
                           lo=0)

    def __post_init__(self):
        if self.schedule == "multistep":
            if not self.milestones:
                raise ConfigError("schedule=multistep needs milestones=[STEP, ...] (e.g. [150, 180, 210] epochs "
                                  "in steps)")
            bad = [m for m in self.milestones if not 0 < m <= self.steps]
            if bad or list(self.milestones) != sorted(self.milestones):
                raise ConfigError(f"milestones={list(self.milestones)}: expected increasing steps in 1..{self.steps}")



@dataclass
class PrivacyConfig:
    """DP-SGD for the student (`retort.train.private`, through Opacus): off unless `target_epsilon` or
    `noise_multiplier` is set. Each training record (a row the method reads: an image, an example, a
    trace) is in a step's batch with probability q = train.batch_size * train.grad_accum / |train|
    (Poisson sampling); its gradient is clipped to `max_grad_norm`, Gaussian noise of std
    noise_multiplier * max_grad_norm is added to the sum, and the sum is divided by the expected batch.
    The guarantee covers the student's weights with respect to those records, nothing else (README,
    "Privacy")."""

    target_epsilon: Optional[float] = param(None, "the epsilon to spend over train.steps: the noise multiplier is "
                                            "chosen (by the accountant) to reach it; or set noise_multiplier",
                                            lo=0.0, lo_open=True)
    noise_multiplier: Optional[float] = param(None, "sigma: noise std over max_grad_norm, fixed; epsilon is then what "
                                              "the accountant reports (instead of target_epsilon)", lo=0.0)
    delta: Optional[float] = param(None, "delta of (epsilon, delta)-DP (default: 1 / the number of private "
                                   "records; 1e-5 or below is the usual choice for a release)", lo=0.0, hi=1.0,
                                   lo_open=True, hi_open=True)
    max_grad_norm: float = param(1.0, "C: every record's gradient is clipped to this L2 norm (over all the "
                                 "student's trainable weights)", lo=0.0, lo_open=True)
    accountant: str = param("rdp", "the privacy accountant (Opacus's): rdp (Renyi DP, Mironov et al.) or prv "
                            "(privacy random variables, Gopi et al.; tighter)", choices=["rdp", "prv"])
    poisson: bool = param(True, "Poisson sampling (Opacus's semantics, variable batch size; what the accountant "
                          "assumes); false: fixed-size batches drawn without replacement each step, for which the "
                          "reported epsilon is the usual approximation, not a proof")
    secret_noise: bool = param(False, "seed the noise and the Poisson draws from the OS's randomness instead of "
                               "`seed`, so whoever holds config.yaml can regenerate neither (the accountant assumes "
                               "both secret), and draw the noise with Opacus's secure_mode (robust to "
                               "floating-point attacks); a resume stays exact through the checkpoint's generator "
                               "state, so keep checkpoints private. For a model you release")
    teacher_public: bool = param(False, "declare that the teacher never saw the private records (a public pretrained "
                                 "model); without it `retort train` warns that the teacher's provenance is unknown")

    def __post_init__(self):
        if self.target_epsilon is not None and self.noise_multiplier is not None:
            raise ConfigError(f"privacy.target_epsilon={self.target_epsilon} and privacy.noise_multiplier="
                              f"{self.noise_multiplier}: set one (the noise is chosen for the epsilon, or the "
                              "epsilon follows from the noise)")

    @property
    def enabled(self) -> bool:
        return self.target_epsilon is not None or self.noise_multiplier is not None


# --------------------------------------------------------------------------- loading


def peek_track(config_file: Optional[str], overrides: list[str], default: str = "lm") -> str:
    """The `track` a command's config names (the last `track=` override, else the YAML file's, else
    `default`, `retort.track.DEFAULT_TRACK`): it decides which run config the rest is read into."""
    for item in reversed(overrides or []):
        key, sep, value = item.partition("=")
        if sep and key.strip() == "track":
            return value.strip()
    if config_file:
        data = _read_yaml(config_file)
        if "track" in data:
            return str(data["track"])
    return default


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _valid_keys(cls, dotted_parent: str) -> list[str]:
    for part in [p for p in dotted_parent.split(".") if p]:
        hint = _field_types(cls).get(part)
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return []
        cls = hint
    return [f.name for f in dataclasses.fields(cls)]


def _check_value(key: str, value, meta) -> None:
    choices, lo, hi = meta.get("choices"), meta.get("lo"), meta.get("hi")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}={value!r} is not allowed; expected one of: {', '.join(map(str, choices))}")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    bad_lo = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
    bad_hi = hi is not None and (value >= hi if meta.get("hi_open") else value > hi)
    if bad_lo or bad_hi:
        left = "" if lo is None else f"{lo} {'<' if meta.get('lo_open') else '<='} "
        right = "" if hi is None else f" {'<' if meta.get('hi_open') else '<='} {hi}"
        raise ConfigError(f"{key}={value} is out of range; expected {left}{key.rsplit('.', 1)[-1]}{right}")


def _yaml_word(value, choices):
    """A choice YAML 1.1 read as a boolean (`chat_template=off` is False to YAML) back as the word,
    when the field's choices have it."""
    if isinstance(value, str) and value in ("True", "False") and choices and value not in choices:
        value = value == "True"  # OmegaConf turned YAML's boolean into its Python name for a str field
    if not isinstance(value, bool) or not choices:
        return value
    for word in (("on", "yes", "true") if value else ("off", "no", "false")):
        if word in choices:
            return word
    return value


def build(cls, data: dict, prefix: str = ""):
    """Instantiate dataclass `cls` from a plain dict, checking every field's declared range."""
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f" under '{prefix.rstrip('.')}'" if prefix else ""
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}'; valid keys{where}: {', '.join(names) or '(none)'}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = f"{prefix}{f.name}"
        value = data[f.name]
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            value = build(hint, value or {}, key + ".")
        else:
            value = _yaml_word(value, f.metadata.get("choices"))
            _check_value(key, value, f.metadata)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}" if prefix and not str(e).startswith(prefix) else str(e)) from None


def _read_yaml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def _shorthands(cls, data: dict) -> dict:
    """A section whose class names a `shorthand` field takes a plain value for it: `agent=code`
    (override or YAML `agent: code`) is `agent.kind=code`."""
    hints = _field_types(cls)
    out = dict(data)
    for key, value in data.items():
        hint = hints.get(key)
        short = getattr(hint, "shorthand", None) if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None
        if short and not isinstance(value, dict):
            out[key] = {short: value}
    return out


def load_config(cls, path: Optional[str] = None, overrides: Optional[list[str]] = None, base: Optional[dict] = None,
                values: Optional[dict] = None):
    """Resolve `cls` defaults <- `base` <- YAML file <- dotted `overrides` (`train.lr=1e-4`) <- `values`
    (a nested dict, the Python API's keyword arguments: `train={"lr": 1e-4}`)."""
    layers: list[tuple[str, Any, Optional[str]]] = []  # (where from, data, an override's key)
    if base:
        layers.append(("defaults", base, None))
    if path:
        layers.append((path, _shorthands(cls, _read_yaml(path)), None))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
        key, _, value = item.partition("=")
        layers.append((f"override {item!r}", _shorthands(cls, OmegaConf.to_container(
            OmegaConf.from_dotlist([f"{key}={value}"]))), key.strip()))
    if values:
        layers.append(("arguments", values, None))
    merged = OmegaConf.structured(cls)
    for source, data, key in layers:
        try:
            merged = OmegaConf.merge(merged, data)
        except ConfigKeyError as e:
            full = e.full_key or str(e.key)
            parent = full.rsplit(".", 1)[0] if "." in full else ""
            valid = _valid_keys(cls, parent)
            where = f" under '{parent}'" if parent else ""
            # an override's value is not repeated: under a misspelled key it may be a secret
            # (teacher.api.key=sk-...), meant for no field at all
            said = f"override '{key}=...'" if key else source
            raise ConfigError(
                f"{said}: unknown key '{full}'; valid keys{where}: {', '.join(valid)}"
            ) from None
        except ValidationError as e:
            msg = str(e.msg).splitlines()[0]
            if source.startswith("override") and "Cannot convert" in msg:
                msg += ("; on the command line a value in { } or [ ] is read as a mapping or list: quote it "
                        "to keep it text, e.g. 'key=\"{answer}\"'")
            raise ConfigError(f"{source}: bad value for '{e.full_key}': {msg}") from None
        except OmegaConfBaseException as e:
            raise ConfigError(f"{source}: {getattr(e, 'msg', e)}") from None
    return build(cls, OmegaConf.to_container(merged, resolve=True))


def diff_keys(a, b, prefix: str = ""):
    """Dotted keys at which two nested dicts differ (what a refused resume or rerun names)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# keys that say where or how fast a run goes, not what it computes: a run directory may be moved,
# and resumed with other threads
NOT_IDENTITY = ("out", "threads")


def saved_config_diff(path: str | os.PathLike, cfg) -> list[str]:
    """Dotted keys at which the config saved at `path` (by `save_config`) differs from `cfg`,
    `NOT_IDENTITY` keys aside. A config saved before a field existed (e.g. student.lora) counts as
    having it at its default."""
    old = yaml.safe_load(Path(path).read_text())
    try:
        old = to_dict(build(type(cfg), old))
    except ConfigError:
        pass
    new = to_dict(cfg)
    if isinstance(old, dict):
        old = {k: v for k, v in old.items() if k not in NOT_IDENTITY}
    new = {k: v for k, v in new.items() if k not in NOT_IDENTITY}
    return sorted(diff_keys(json.loads(json.dumps(old)), json.loads(json.dumps(new))))


def save_config(cfg, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically: a crash leaves the old file or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)


def describe(cfg, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, doc with range) for every field of a config (a class: its defaults; an
    instance: its values, e.g. the teacher's defaults): what `retort config` prints. A section's
    own defaults (the teacher's `builtin:teacher`) are shown, not its class's."""
    if isinstance(cfg, type):
        cfg = cfg()
    rows = []
    hints = _field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        hint = hints[f.name]
        key = prefix + f.name
        default = getattr(cfg, f.name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            rows.extend(describe(default, key + "."))
            continue
        doc = f.metadata.get("doc", "")
        m = f.metadata
        if m.get("choices"):
            doc += f" [{' | '.join(m['choices'])}]"
        elif m.get("lo") is not None or m.get("hi") is not None:
            lo = "" if m.get("lo") is None else f"{m['lo']} {'<' if m.get('lo_open') else '<='} "
            hi = "" if m.get("hi") is None else f" {'<' if m.get('hi_open') else '<='} {m['hi']}"
            doc += f" [{lo}x{hi}]"
        rows.append((key, repr(default), doc))
    return rows

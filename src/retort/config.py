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
from typing import Any, Dict, List, Optional

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


# --------------------------------------------------------------------------- sections


@dataclass
class TaskConfig:
    name: str = param("modchain", "built-in task name (see `retort tasks`) or a .jsonl/.parquet file")
    verifier: str = param("numeric", "answer check for file tasks", choices=["exact", "numeric", "math"])
    difficulty: Dict[str, Any] = param({}, "difficulty knobs of a built-in task, e.g. {steps_max: 6}")
    test_fraction: float = param(0.1, "share of a file task's rows held out as the test split (chosen by a hash "
                                 "of the prompt); 0: no split, train and test are the whole file. `retort eval` "
                                 "defaults to 0 (a file given for evaluation is evaluated whole)",
                                 lo=0.0, hi=1.0, hi_open=True)


@dataclass
class ModelConfig:
    name: str = param(
        "preset:teacher",
        "preset:NAME (built-in tiny Llama), builtin:teacher (the cached trained teacher), "
        "a local HF directory, a .gguf file, or a hub id",
    )
    gguf_file: Optional[str] = param(None, "GGUF file name inside `name` (a directory or hub id)")
    dtype: str = param("float32", "weights dtype when loading", choices=["float32", "bfloat16", "float16", "auto"])
    trust_remote_code: bool = param(False, "run model code from the checkpoint (off unless you trust it)")
    chat_template: str = param("auto", "wrap prompts in the tokenizer's chat template: auto = when it has one",
                               choices=["auto", "off"])
    keep_layers: int = param(0, "keep only this many evenly spaced decoder layers, initialised from the "
                                "loaded ones (a layer-pruned student); 0 keeps all", lo=0)


@dataclass
class ApiConfig:
    """An OpenAI-compatible server as the teacher (`teacher.name=openai:MODEL`)."""

    base_url: str = param("http://127.0.0.1:8000/v1", "the server's /v1 URL; several, separated by commas, "
                          "share the requests (see balance)")
    key_env: str = param("OPENAI_API_KEY", "name of the environment variable that holds the API key (read at "
                         "run time, never written anywhere); unset or empty: no key is sent")
    endpoint: str = param("chat", "chat: /chat/completions, the server applies the chat template; completions: "
                          "/completions with the prompt as given", choices=["chat", "completions"])
    system: Optional[str] = param(None, "a system message before each prompt (chat endpoint)")
    balance: str = param("least_loaded", "how requests are spread over several base URLs",
                         choices=["least_loaded", "round_robin"])
    max_in_flight: int = param(64, "requests open at once (over all URLs)", lo=1)
    rpm: float = param(0.0, "requests per minute at most (0: no limit)", lo=0.0)
    tpm: float = param(0.0, "tokens per minute at most (prompt + max_tokens, settled with the server's usage; "
                       "0: no limit)", lo=0.0)
    timeout_s: float = param(600.0, "seconds one request may take", lo=0.0, lo_open=True)
    max_retries: int = param(6, "retries of a request after 429, 5xx, a timeout, a lost connection or a "
                             "malformed body (exponential backoff, Retry-After honoured)", lo=0)
    backoff_s: float = param(1.0, "first retry delay; doubles each retry (with jitter), at most 60 s", lo=0.0)
    on_length: str = param("keep", "a completion cut by max_new_tokens (finish_reason=length): keep it (marked "
                           "truncated), retry it with another seed (up to max_retries, then drop), or drop it",
                           choices=["keep", "retry", "drop"])
    reasoning_template: str = param("<think>\n{reasoning}\n</think>\n\n{answer}", "how a reasoning server's "
                                    "separate reasoning_content and answer become the completion the student learns "
                                    "(the answer alone is verified; the reasoning is also kept in its own column)")
    logprobs: bool = param(True, "ask for the log-prob of each generated token (and sampling.topk alternatives)")
    tokenizer: Optional[str] = param(None, "the served model's tokenizer (a local directory, .gguf, preset: or hub "
                                     "id): maps the server's tokens to ids, checked against the server's /tokenize "
                                     "when it has one. Without it rows keep text and token strings only, and "
                                     "token-level KD from them is refused")
    extra_body: Dict[str, Any] = param({}, "extra request fields passed as they are (e.g. {top_k: 20} or "
                                       "{chat_template_kwargs: {enable_thinking: true}})")
    price_prompt: float = param(0.0, "price per million prompt tokens, for the cost in the manifest's ledger",
                                lo=0.0)
    price_completion: float = param(0.0, "price per million completion tokens", lo=0.0)


# what identifies an API teacher's samples (a trace set's params); the rest (URLs, limits, prices) may
# change between a run and its resume
API_IDENTITY = ("endpoint", "system", "on_length", "logprobs", "tokenizer", "extra_body", "reasoning_template")


@dataclass
class LoraConfig:
    """LoRA adapters on the student (optional extra `peft`); r=0 trains the whole model."""

    r: int = param(0, "LoRA rank; 0 = off (train every weight). >0 trains only the adapters (pip install peft); "
                   "checkpoints then hold the adapter, RUN_DIR/model the merged model", lo=0)
    alpha: float = param(16.0, "LoRA alpha: the adapter's update is scaled by alpha / r", lo=0.0, lo_open=True)
    dropout: float = param(0.0, "dropout on the adapters' input", lo=0.0, hi=1.0, hi_open=True)
    target_modules: List[str] = param(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "names of the linear layers that get adapters (default: attention and MLP projections of "
        "Llama/Qwen-like models); not lm_head or embed_tokens")

    def __post_init__(self):
        if self.r and not self.target_modules:
            raise ConfigError("target_modules is empty; name at least one linear layer (e.g. q_proj)")
        bad = sorted({"lm_head", "embed_tokens"} & set(self.target_modules))
        if bad:
            raise ConfigError(f"target_modules may not include {', '.join(bad)}: the fused losses read the "
                              "output layer's weight directly, so an adapter there would be ignored")


@dataclass
class StudentConfig(ModelConfig):
    """The model being trained: a `ModelConfig` plus optional LoRA adapters."""

    lora: LoraConfig = section(LoraConfig, "LoRA adapters (student.lora.r > 0 turns them on)")


@dataclass
class TeacherConfig(ModelConfig):
    """A teacher: a model (`ModelConfig`), or `openai:MODEL` served behind an OpenAI-compatible API."""

    api: ApiConfig = section(ApiConfig, "the server, when teacher.name=openai:MODEL")


def teacher_params(cfg) -> dict:
    """A teacher's config as it identifies samples (a trace manifest's params): the api section only
    for `openai:` teachers, and then only the keys that change what is sampled (`API_IDENTITY`)."""
    d = dataclasses.asdict(cfg)
    api = d.pop("api", None)
    if str(cfg.name).startswith("openai:") and api is not None:
        d["api"] = {k: api[k] for k in API_IDENTITY}
    return d


@dataclass
class DataConfig:
    source: str = param("solutions", "what the student learns from: the task's worked solutions, "
                        "bare answers, or teacher traces", choices=["solutions", "answers", "traces"])
    traces: Optional[str] = param(None, "trace directory when source=traces (made by `retort traces`)")
    trace_filter: str = param("correct", "which traces to learn from when source=traces",
                              choices=["correct", "all"])
    n_train: int = param(50000, "training examples drawn from the task's train split", lo=1)
    max_len: int = param(256, "longest prompt+completion in tokens; longer examples are dropped", lo=8)
    skills: float = param(0.0, "with source=solutions: this share of the rows are the task's skill examples "
                          "(what its built-in teacher learns besides solving, e.g. detours' trace rewrites)",
                          lo=0.0, hi=0.9)


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
class EvalConfig:
    split: str = param("test", "task split to evaluate", choices=["train", "test"])
    n: int = param(200, "number of prompts", lo=1)
    k: int = param(1, "samples per prompt for pass@k / maj@k (1: greedy only)", lo=1)
    temperature: float = param(1.0, "sampling temperature for k > 1", lo=0.0, lo_open=True)
    top_p: float = param(1.0, "nucleus sampling for k > 1", lo=0.0, hi=1.0, lo_open=True)
    max_new_tokens: int = param(128, "completion length limit", lo=1)
    batch_size: int = param(64, "prompts per generation batch", lo=1)
    seed: int = param(1234, "seed for the test prompts and sampling")
    fidelity: bool = param(True, "train: also measure agreement with the run's teacher at each evaluation (same "
                           "answer, top-1 token, KL per token; `retort eval --fidelity-to`): the traces' teacher for "
                           "data.source=traces, else the method's teacher; a local model only")


# --------------------------------------------------------------------------- commands


@dataclass
class TrainRun:
    """`retort train`: one student, one method, one run directory."""

    out: str = param("runs/train", "run directory (config, metrics, checkpoints)")
    seed: int = param(0, "seed for model init, data order and sampling")
    method: str = param("sft", "training method (see `retort methods`)")
    method_args: Dict[str, Any] = param({}, "the method's own options (see `retort methods`)")
    task: TaskConfig = section(TaskConfig, "the task")
    student: StudentConfig = section(StudentConfig, "the model being trained")
    teacher: TeacherConfig = section(TeacherConfig, "the teacher, for methods that need one", name="builtin:teacher")
    data: DataConfig = section(DataConfig, "training data")
    train: OptimConfig = section(OptimConfig, "optimisation and logging")
    eval: EvalConfig = section(EvalConfig, "periodic and final evaluation")
    track: str = param("lm", "the family of students (retort.track): lm = language models", choices=["lm"])
    threads: int = param(0, "CPU threads for torch; 0 = auto: one thread while the model and batch are small "
                            "(many tiny ops), torch's default (one per core) above; set 1 on a busy machine", lo=0)

    def __post_init__(self):
        if self.data.source == "traces" and not self.data.traces:
            raise ConfigError("data.source=traces needs data.traces=DIR (a `retort traces` output)")


@dataclass
class SamplingConfig:
    n: int = param(4, "completions sampled per prompt", lo=1)
    temperature: float = param(1.0, "sampling temperature (0: greedy)", lo=0.0)
    top_p: float = param(1.0, "nucleus sampling", lo=0.0, hi=1.0, lo_open=True)
    max_new_tokens: int = param(128, "completion length limit", lo=1)
    stop: List[str] = param([], "stop strings (generation also stops at EOS)")
    topk: int = param(0, "also store the teacher's top-k log-probs at every position (0: none)", lo=0)
    seed: int = param(0, "sampling seed (each shard derives its own)")


@dataclass
class TracesRun:
    """`retort traces`: the teacher samples completions of task prompts; each is verified and stored."""

    out: str = param("runs/traces", "trace directory (Parquet shards + manifest.json)")
    split: str = param("train", "task split whose prompts are used", choices=["train", "test"])
    n_prompts: int = param(1000, "number of prompts", lo=1)
    seed: int = param(0, "seed for choosing the prompts")
    shard_prompts: int = param(64, "prompts per shard (the unit of crash-safe progress)", lo=1)
    batch_size: int = param(64, "sequences per generation batch", lo=1)
    task: TaskConfig = section(TaskConfig, "the task")
    teacher: TeacherConfig = section(TeacherConfig, "the model sampled (or openai:MODEL, a server)",
                                     name="builtin:teacher")
    teachers: List[str] = param([], "several local teachers sampled into one set (model names; the other teacher.* "
                                "settings apply to each): every teacher samples every prompt, sampling.n times; "
                                "rows record which one (columns teacher, teacher_sha256). Empty: teacher.name alone")
    sampling: SamplingConfig = section(SamplingConfig, "how completions are sampled")
    threads: int = param(0, "CPU threads for torch; 0 = auto: one thread while the model and batch are small "
                            "(many tiny ops), torch's default (one per core) above; set 1 on a busy machine", lo=0)


@dataclass
class EvalRun:
    """`retort eval`: one or more models on one task."""

    out: Optional[str] = param(None, "write results JSON here (default: print only)")
    task: TaskConfig = section(TaskConfig, "the task (a file is evaluated whole unless task.test_fraction > 0)",
                               test_fraction=0.0)
    model: ModelConfig = section(ModelConfig, "the model evaluated", name="builtin:teacher")
    eval: EvalConfig = section(EvalConfig, "what and how to evaluate")
    threads: int = param(0, "CPU threads for torch; 0 = auto: one thread while the model and batch are small "
                            "(many tiny ops), torch's default (one per core) above; set 1 on a busy machine", lo=0)


# --------------------------------------------------------------------------- loading


def peek_track(config_file: Optional[str], overrides: list[str]) -> str:
    """The `track` a command's config names (the last `track=` override, else the YAML file's, else
    lm): it decides which run config the rest is read into."""
    for item in reversed(overrides or []):
        key, sep, value = item.partition("=")
        if sep and key.strip() == "track":
            return value.strip()
    if config_file:
        data = _read_yaml(config_file)
        if "track" in data:
            return str(data["track"])
    return "lm"


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


def load_config(cls, path: Optional[str] = None, overrides: Optional[list[str]] = None, base: Optional[dict] = None):
    """Resolve `cls` defaults <- `base` <- YAML file <- dotted `overrides` (`train.lr=1e-4`)."""
    layers: list[tuple[str, Any]] = []
    if base:
        layers.append(("defaults", base))
    if path:
        layers.append((path, _read_yaml(path)))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
        key, _, value = item.partition("=")
        layers.append((f"override {item!r}", OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={value}"]))))
    merged = OmegaConf.structured(cls)
    for source, data in layers:
        try:
            merged = OmegaConf.merge(merged, data)
        except ConfigKeyError as e:
            full = e.full_key or str(e.key)
            parent = full.rsplit(".", 1)[0] if "." in full else ""
            valid = _valid_keys(cls, parent)
            where = f" under '{parent}'" if parent else ""
            raise ConfigError(
                f"{source}: unknown key '{full}'; valid keys{where}: {', '.join(valid)}"
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

"""The language-model track's configs: the task, models (local, GGUF, hub, an API teacher, LoRA),
data, evaluation, and the run configs of `retort train`, `retort traces` and `retort eval`, built on
the core's field conventions (`retort.config.param`, `section`) and its optimisation section."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..config import OptimConfig, PrivacyConfig, param, section
from ..errors import ConfigError

@dataclass
class TaskConfig:
    name: str = param("modchain", "built-in task name (see `retort tasks`) or a .jsonl/.parquet file")
    verifier: str = param("numeric", "answer check for file tasks", choices=["exact", "numeric", "math"])
    difficulty: Dict[str, Any] = param({}, "difficulty knobs of a built-in task, e.g. {steps_max: 6}")
    test_fraction: float = param(0.1, "share of a file task's rows held out as the test split (chosen by a hash "
                                 "of the prompt); 0: no split, train and test are the whole file. `retort eval` "
                                 "defaults to 0 (a file given for evaluation is evaluated whole)",
                                 lo=0.0, hi=1.0, hi_open=True)
    prompt: Optional[str] = param(None, "the prompt template: {question} is the task's own question, {format} the "
                                  "answer format's instruction (e.g. 'Answer with the number only.'). Unset: the "
                                  "question alone in the task's own format, else '{format}\\n{question}'")
    system: Optional[str] = param(None, "a system message before every prompt (the chat template's system turn; "
                                  "without one, the text before the prompt). Unset: the task's own (reasoning-gym's "
                                  "default system prompt for rg: tasks in their tag format, else none); none: no system message")
    answer: Optional[str] = param(None, "the answer format asked for and read: marker (a last line A:ANSWER), boxed "
                                  "(\\boxed{}), tag (<answer></answer>), final_number, last_line. Unset: the task's "
                                  "own (marker for built-in tasks, tag for rg:, the verifier's reading for files). "
                                  "Not found, the others are read in order tag, boxed, 'answer is'/'Answer:', final "
                                  "number (marker: never)")
    strict: bool = param(False, "read only the task.answer format, no fallbacks")


    def __post_init__(self):
        from .tasks.answers import MODES

        if self.answer is not None and self.answer not in MODES:
            raise ConfigError(f"task.answer={self.answer!r} is not allowed; expected one of: {', '.join(MODES)}")


@dataclass
class ModelConfig:
    name: str = param(
        "preset:teacher",
        "preset:NAME (built-in tiny Llama), builtin:teacher (the cached trained teacher), a packaged "
        "model by name (`retort models`: smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct, gemma-3-270m), "
        "a local HF directory, a .gguf file, pkg:MODULE/FILE, or a hub id",
    )
    gguf_file: Optional[str] = param(None, "GGUF file name inside `name` (a directory or hub id)")
    dtype: str = param("float32", "weights dtype when loading", choices=["float32", "bfloat16", "float16", "auto"])
    trust_remote_code: bool = param(False, "run model code from the checkpoint (off unless you trust it)")
    chat_template: str = param("auto", "wrap prompts in the tokenizer's chat template: auto = when it has one, on = "
                               "refuse a tokenizer without one, off = plain text (the system message, a blank line, "
                               "the prompt)", choices=["auto", "on", "off"])
    keep_layers: int = param(0, "keep only this many decoder layers, the first and last among them, initialised "
                                "from the loaded ones (a layer-pruned student; see `prune`); 0 keeps all", lo=0)
    prune: str = param("block", "keep_layers: which layers go: block = one contiguous block, placed where the "
                       "pruned copy's next-token distributions on a short calibration text stay closest to the "
                       "full model's (KL); even = evenly spaced layers kept",
                       choices=["block", "even"])


# the key variable an API teacher reads by default; unset, no key is sent (a local server needs none)
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


def check_key_env(name: Optional[str]) -> None:
    """Refuse a `teacher.api.key_env` that names no environment variable that is set (the default
    aside: unset, it sends no key). What it holds is never repeated, here or anywhere: a key pasted
    in place of the variable's name (`hf_...`, `sk-...`) would otherwise reach the console, the run's
    config.yaml and a trace set's manifest."""
    if not name or name == DEFAULT_KEY_ENV or name in os.environ:
        return
    raise ConfigError("teacher.api.key_env names no environment variable that is set; it must be the NAME of the "
                      "variable holding the key (export MY_KEY=... first, then key_env=MY_KEY), or empty "
                      "(teacher.api.key_env=) for a server that takes no key. Its value is not repeated here: if it "
                      "is a key, it was never sent or written")


@dataclass
class ApiConfig:
    """An OpenAI-compatible server as the teacher (`teacher.name=openai:MODEL`)."""

    base_url: str = param("http://127.0.0.1:8000/v1", "the server's /v1 URL; several, separated by commas, "
                          "share the requests (see balance)")
    key_env: Optional[str] = param(DEFAULT_KEY_ENV, "NAME of the environment variable that holds the API key (read "
                                   "at run time, never written anywhere); it must be set, except the default, which "
                                   "unset sends no key; empty (key_env=) sends none either (a local server)")
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

    def __post_init__(self):
        check_key_env(self.key_env)


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

    prune_check: int = param(32, "keep_layers, a new training run: score the pruned copy and the model it was cut "
                             "from on this many eval prompts before training, and say what share it keeps; 0: skip",
                             lo=0)
    grad_checkpointing: bool = param(False, "recompute each decoder layer's activations in the backward instead "
                                     "of keeping them (transformers' gradient checkpointing): about a third more "
                                     "compute; SmolLM2-135M keeps ~74 KiB per token instead of ~1.3 MiB")
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
class EvalConfig:
    split: str = param("test", "task split to evaluate", choices=["train", "test"])
    n: int = param(200, "number of prompts", lo=1)
    k: int = param(1, "samples per prompt for pass@k / maj@k (1: greedy only)", lo=1)
    temperature: float = param(1.0, "sampling temperature for k > 1", lo=0.0, lo_open=True)
    top_p: float = param(1.0, "nucleus sampling for k > 1", lo=0.0, hi=1.0, lo_open=True)
    max_new_tokens: int = param(128, "completion length limit", lo=1)
    batch_size: int = param(64, "prompts per generation batch", lo=1)
    seed: int = param(1234, "seed for the test prompts and sampling")
    stop: List[str] = param([], "stop strings ending each answer (as well as EOS), e.g. eval.stop=['\\n\\n'] for a "
                            "model that goes on past its answer")
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
    privacy: PrivacyConfig = section(PrivacyConfig, "DP-SGD for the student (off unless privacy.target_epsilon or "
                                     "privacy.noise_multiplier is set; README, Privacy)")
    track: str = param("lm", "the family of students (retort.track): lm = language models", choices=["lm"])
    threads: int = param(0, "CPU threads for torch; 0 = auto: one thread while the model and batch are small "
                            "(many tiny ops), torch's default (one per core) above; set 1 on a busy machine", lo=0)

    def __post_init__(self):
        if self.data.source == "traces" and not self.data.traces:
            raise ConfigError("data.source=traces needs data.traces=DIR (a `retort traces` output)")
        if self.data.source == "traces":
            adopt_trace_format(self.task, self.data.traces)


def adopt_trace_format(task: TaskConfig, traces: str) -> None:
    """The student learns the format its teacher's traces were prompted with: a run from a trace set
    whose task.prompt / system / answer / strict are all unset takes the set's (its manifest's
    `prompt_format`); one that sets any of them must set them as the set has them."""
    import json
    from pathlib import Path

    from .tasks.base import LEGACY_FORMAT, manifest_format

    path = Path(traces) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # not a trace set (yet): reading its rows says so
    fmt = manifest_format(manifest)
    mine = {"answer": task.answer, "strict": task.strict, "system": task.system, "template": task.prompt}
    if all(v in (None, False) for v in mine.values()):
        if fmt != LEGACY_FORMAT:
            task.answer, task.strict, task.system, task.prompt = fmt["answer"], fmt["strict"], fmt["system"] or "", \
                fmt["template"]
        return
    from .tasks import get_task

    ours = get_task(task).prompt_format()
    for key, cfg_key in (("answer", "answer"), ("strict", "strict"), ("system", "system"), ("template", "prompt")):
        if ours[key] != fmt.get(key):
            raise ConfigError(f"task.{cfg_key}: this run's is {ours[key]!r}, but the traces in {traces} were prompted "
                              f"with {fmt.get(key)!r}; a student learns the format of its teacher's "
                              "traces (leave task.prompt, system, answer and strict unset to take theirs)")


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
class ProgramConfig:
    """Program distillation (`program=python`; Jie & Lu, arXiv 2305.18170): how the teacher's
    programs are sampled, prompted and run."""

    tries: int = param(4, "programs sampled per question at most: the first greedy, the others at `temperature`, "
                       "until one prints the answer", lo=1)
    temperature: float = param(0.5, "sampling temperature of the tries after the first (the paper's 0.5)",
                               lo=0.0, lo_open=True)
    exemplars: int = param(0, "solved questions shown before each question in the PAL prompt (the paper's k=8); 0: "
                           "the instruction and the question alone (for the built-in progs task, whose teacher is "
                           "trained to answer with programs: the question alone)", lo=0)
    select: str = param("dynamic", "which solved questions: dynamic = the most similar (TF-IDF cosine, scikit-learn), "
                        "static = the same first ones for every question, random = drawn per question",
                        choices=["dynamic", "static", "random"])
    pool: Optional[str] = param(None, "exemplars > 0: a trace set made with program=python whose correct rows are "
                                "the solved questions; unset: the task's own worked solutions (train split) when "
                                "they are programs")
    pool_size: int = param(1000, "solved questions read into the pool at most", lo=1)
    timeout_s: float = param(10.0, "wall-clock seconds one program may run", lo=0.0, lo_open=True)
    cpu_s: int = param(5, "CPU seconds one program may use", lo=1)
    memory_mb: int = param(2048, "address space one program may use (MB)", lo=64)
    workers: int = param(2, "programs run at once (one sandbox each)", lo=1)

    def limits(self):
        from ..sandbox import Limits

        return Limits(timeout_s=self.timeout_s, cpu_s=self.cpu_s, memory_mb=self.memory_mb)


@dataclass
class AgentConfig:
    """Agent distillation (`agent=code`; Kang et al., arXiv 2505.17612): the CodeAct loop of
    `retort.lm.rollout.agent` with a sandboxed Python tool. `agent=code` is short for `agent.kind=code`."""

    shorthand = "kind"  # `agent=code` on the command line or in YAML sets this field (retort.config)

    kind: str = param("none", "code: the model acts in a CodeAct loop (thought, a ```python action, the sandbox's "
                      "output as a tool turn, ...) until it calls final_answer(x) or max_steps; rows are "
                      "conversations (`messages`)", choices=["none", "code"])
    max_steps: int = param(5, "actions per question at most (an episode that reaches it is marked hit_max_steps)",
                           lo=1)
    first_thought: str = param("none", "cot: first-thought prefix (FTP): step 1 continues 'Thought: ' + the first "
                               "paragraph of the teacher's own CoT answer to the question (traces)",
                               choices=["none", "cot"])
    cot: Optional[str] = param(None, "first_thought=cot: a trace set of the same teacher's CoT answers (made by "
                               "`retort traces` on the same prompts); unset: the teacher answers each question "
                               "greedily first")
    sag: int = param(1, "self-consistent action generation (SAG, eval): actions sampled per step; those that fail "
                     "to parse or run are dropped and the majority by execution output is taken (1: greedy)", lo=1)
    sag_temperature: float = param(0.4, "sag > 1: sampling temperature of the actions (the authors' 0.4)", lo=0.0,
                                   lo_open=True)
    sag_top_p: float = param(0.8, "sag > 1: nucleus sampling of the actions (the authors' 0.8)", lo=0.0, hi=1.0,
                             lo_open=True)
    system: str = param("auto", "the system turn: auto = the CodeAct instruction for a task whose own answers are "
                        "not actions (none for the built-in calc task, whose teacher is trained on them); none; or "
                        "the text itself")
    observation_chars: int = param(1000, "printed output kept in a tool turn (the rest cut, its length said)", lo=1)
    timeout_s: float = param(10.0, "wall-clock seconds one action may run (sandbox)", lo=0.0, lo_open=True)
    cpu_s: int = param(5, "CPU seconds one action may use (sandbox)", lo=1)
    memory_mb: int = param(2048, "address space one action may use, MB (sandbox)", lo=64)
    workers: int = param(2, "actions run at once (one sandbox each)", lo=1)

    def limits(self):
        from ..sandbox import Limits

        return Limits(timeout_s=self.timeout_s, cpu_s=self.cpu_s, memory_mb=self.memory_mb)


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
    program: str = param("none", "python: the teacher writes a program per question, run in the sandbox; a row "
                         "keeps the program as its completion, correct when its output is the answer (the "
                         "`programs` section; one row per question: sampling.n and sampling.temperature are not used, "
                         "programs.tries and programs.temperature are)", choices=["none", "python"])
    programs: ProgramConfig = section(ProgramConfig, "program=python: tries, exemplars, the sandbox's limits")
    agent: AgentConfig = section(AgentConfig, "agent=code: agent traces (CodeAct, a sandboxed Python tool); one "
                                 "greedy episode per question (sampling.n and sampling.temperature are not used; "
                                 "sampling.max_new_tokens is per step)")
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
    program: str = param("none", "python: each answer is a program, run in the sandbox; its printed output is "
                         "checked (a program-distilled student)", choices=["none", "python"])
    programs: ProgramConfig = section(ProgramConfig, "program=python: the sandbox's limits (timeout_s, cpu_s, "
                                      "memory_mb, workers)")
    agent: AgentConfig = section(AgentConfig, "agent=code: the model runs as an agent in the sandbox (max_steps, "
                                 "sag; eval.max_new_tokens is per step)")
    track: str = param("lm", "the family of models (retort.track): lm = language models", choices=["lm"])
    threads: int = param(0, "CPU threads for torch; 0 = auto: one thread while the model and batch are small "
                            "(many tiny ops), torch's default (one per core) above; set 1 on a busy machine", lo=0)



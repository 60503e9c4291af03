"""On-policy distillation's shared parts (no method of its own): the student samples, the teacher
grades every token it produced.

`Rollouts` is the data source. Micro-batches start from the same deterministic, length-bucketed
order of prompts as the off-policy methods (`OffPolicy.example_batches` over `data_examples`). For
each one, with probability `lmbda` (drawn from a seed of the run seed and the micro-batch index, so
resuming and changing the process count repeat the same choices), its completions are replaced by
fresh samples of the *current* student for the same prompts (GKD, Agarwal et al. 2024, "On-Policy
Distillation of Language Models: Learning from Self-Generated Mistakes", arXiv:2306.13649);
otherwise, with `seq_kd`, by samples of the teacher; otherwise the data's completions are kept.
Samples come from the rollout engine shared with `retort traces` and `retort eval`
(`retort.lm.rollout.generate_ids`: batched, KV cache, left padding, temperature / top-p, stop at
EOS), seeded per micro-batch under a forked RNG, so the training run's own random streams are
untouched. Prompt and padding are masked (-100); a rollout that stopped gets its EOS as a label;
one cut by `max_new_tokens` does not.

`gate` (KEPO's quality gate): a rollout whose answer the task does not verify is masked out
entirely — no token of it is distilled. Logged per step: `on_policy` (share of micro-batches
sampled now), `rollout_tokens` (mean completion length), `rollout_correct` (share verified),
`kept` (share of rollouts trained on).

`OnPolicy` puts the parts together for the methods that subclass it (`gkd`, `opsd`, `tsd_kd`,
`rkl_pg`): the data's prompts, `Rollouts`, and the run's teacher (`LazyTeacher`); each method
brings its loss.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Iterator

import torch

from ...config import param
from ...errors import ConfigError
from ..data.collate import IGNORE, Encoded, collate
from ..models.lora import AdaptersDisabled
from ..rollout.generate import generate_ids
from ..teachers import Teacher
from .base import BatchPlan, OffPolicy
from .distill import LazyTeacher
from .examples import data_examples
from .hidden import unwrap


@dataclass
class RolloutConfig:
    """Sampling fields every on-policy method has (inherited by each method's Config)."""

    lmbda: float = param(1.0, "share of micro-batches whose completions the student samples now (GKD's lambda); "
                         "the others keep the data's completions", lo=0.0, hi=1.0)
    seq_kd: bool = param(False, "the micro-batches not sampled by the student get completions the teacher samples "
                         "now (GKD's seq_kd) instead of the data's")
    temperature: float = param(1.0, "temperature of the rollouts and of both distributions in the loss",
                               lo=0.0, lo_open=True)
    top_p: float = param(1.0, "nucleus sampling of the rollouts", lo=0.0, hi=1.0, lo_open=True)
    max_new_tokens: int = param(96, "longest rollout (a rollout cut here gets no EOS label)", lo=1)
    gate: bool = param(False, "KEPO quality gate: distil only on rollouts whose answer the task verifies")
    engine: str = param("auto", "rollout engine: auto (fast for Llama, Mistral, Qwen2 and Gemma 3 text decoders, "
                        "else hf), fast, hf (transformers' generate), or vllm (GPU; pip install 'retort[vllm]', "
                        "vLLM >= 0.9.1; weights pushed each optimizer step)", choices=["auto", "fast", "hf", "vllm"])
    rollout_dtype: str = param("model", "weights' dtype while sampling: model (as trained), or bfloat16 (the fast "
                               "engine samples from a bf16-rounded copy, as a bf16 vLLM would: ~3x faster decode on "
                               "CPUs with AMX, samples not exactly the fp32 student's; the loss stays in the "
                               "model's dtype)", choices=["model", "bfloat16"])
    vllm_gpu_memory: float = param(0.3, "share of GPU memory vLLM may take (engine=vllm)", lo=0.05, hi=0.95)


ROLLOUT_DTYPES = {"model": None, "bfloat16": torch.bfloat16}


class Rollouts:
    """On-policy micro-batches (module docstring) for a method with config `cfg` (a `RolloutConfig`).
    `teacher(student)` is what samples with `seq_kd`: a `Teacher`, or a model; `step()` is the
    optimizer step the micro-batches being drawn belong to (the method's `on_step` count): vLLM's
    copy of the weights is refreshed when it changes."""

    def __init__(self, ctx, cfg, teacher, step):
        self.ctx, self.cfg, self.teacher, self.step = ctx, cfg, teacher, step
        self._vllm = None

    def prompts(self, data: list[Encoded]) -> list[Encoded]:
        """`data`, refused when it cannot be sampled from (multi-turn rows) or gated (no answer)."""
        if any(x.multi_turn for x in data):
            raise ConfigError("on-policy methods sample one completion per prompt; the data has multi-turn rows "
                              "(messages), which off-policy methods (sft, kd) train on")
        if self.cfg.gate and any(x.answer is None for x in data):
            raise ConfigError("method_args.gate=true needs a reference answer for every prompt "
                              f"(data.source={self.ctx.run.data.source} has prompts without one)")
        return data

    def batches(self, example_batches, plan: BatchPlan) -> Iterator[dict]:
        """Collated micro-batches of `example_batches` ((chunk index, items) each), sampled as the
        module docstring says; `items` and `stats` ride along in each batch."""
        pad = self.ctx.tokenizer.pad_token_id
        for chunk, items in example_batches:
            rng = random.Random(f"{plan.seed}:rollout:{chunk}")
            on_policy = rng.random() < self.cfg.lmbda
            seed = rng.randrange(2 ** 31)
            stats = {"on_policy": float(on_policy)}
            if on_policy:
                items, more = self.rollout(items, self.ctx.student(), seed=seed, gate=self.cfg.gate)
                stats.update(more)
            elif self.cfg.seq_kd:
                student = self.ctx.student()
                teacher = self.teacher(student)
                items, _ = self.rollout(items, getattr(teacher, "model", teacher) if isinstance(teacher, Teacher)
                                        else teacher, seed=seed, gate=False)
            batch = collate(items, pad)
            batch["items"] = items
            batch["stats"] = stats
            yield batch

    def rollout(self, items: list[Encoded], model, *, seed: int, gate: bool) -> tuple[list[Encoded], dict]:
        """The items with their completions replaced by samples of `model` for the same prompts."""
        if isinstance(model, AdaptersDisabled):  # a LoRA student's initial self (opsd's seq_kd): adapters off
            with model.disabled() as base:
                return self.rollout(items, base, seed=seed, gate=gate)
        tok, c = self.ctx.tokenizer, self.cfg
        prompts = [x.input_ids[:x.prompt_len] for x in items]
        student = model is self.ctx.student()
        if c.engine == "vllm" and student:
            outs = [[o] for o in self._vllm_rollout(unwrap(model), prompts, seed)]
        else:
            engine = "auto" if c.engine == "vllm" else c.engine  # the teacher (seq_kd) samples in-process
            outs = generate_ids(unwrap(model), tok, prompts, max_new_tokens=c.max_new_tokens,
                                temperature=c.temperature, top_p=c.top_p, num_samples=1, batch_size=len(prompts),
                                seed=seed, engine=engine, dtype=ROLLOUT_DTYPES[c.rollout_dtype])
        eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
        new, correct, kept, lengths = [], 0, 0, 0
        for x, p, (comp,) in zip(items, prompts, outs):
            ids = comp.token_ids + (eos if comp.finish_reason == "stop" else [])
            ok = x.answer is not None and self.ctx.task.verify(comp.text, x.answer, x.prompt)
            keep = ok or not gate
            correct += ok
            kept += keep
            lengths += len(comp.token_ids)
            new.append(replace(x, input_ids=p + ids, labels=[IGNORE] * len(p) + (ids if keep else [IGNORE] * len(ids)),
                               topk_ids=None, topk_logprobs=None))
        n = max(1, len(items))
        return new, {"rollout_tokens": lengths / n, "rollout_correct": correct / n, "kept": kept / n}

    def _vllm_rollout(self, model, prompts, seed):
        from ..rollout.vllm_engine import VLLMEngine

        if self._vllm is None:
            self._vllm = VLLMEngine(model, self.ctx.tokenizer, gpu_memory_utilization=self.cfg.vllm_gpu_memory,
                                    seed=self.ctx.run.seed)
        self._vllm.sync(model, self.step())
        tok = self.ctx.tokenizer
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        return self._vllm.generate(prompts, max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                                   top_p=self.cfg.top_p, seed=seed, eos_ids=eos)


class OnPolicy(OffPolicy):
    """The shared frame of on-policy methods (not a method): the data's prompts (`data_examples`),
    sampled by `Rollouts`, graded by the run's teacher (`LazyTeacher`, or a method's own `teacher`);
    subclasses implement `loss` and `teacher_needs`."""

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        if cfg.engine == "vllm" and getattr(getattr(ctx.run.student, "lora", None), "r", 0):
            raise ConfigError("method_args.engine=vllm pushes whole weights to vLLM, not LoRA adapters; "
                              "use engine=auto with student.lora.r > 0")
        if cfg.rollout_dtype != "model" and cfg.engine in ("hf", "vllm"):
            raise ConfigError(f"method_args.rollout_dtype={cfg.rollout_dtype} is an option of the fast engine; "
                              f"method_args.engine={cfg.engine} samples in its own dtype (use engine=auto or fast)")
        self.run_teacher = LazyTeacher(ctx)
        self.rollouts = Rollouts(ctx, cfg, self.teacher, step=lambda: self.step)

    def examples(self) -> list[Encoded]:
        return self.rollouts.prompts(data_examples(self.ctx))

    def batches(self, plan: BatchPlan) -> Iterator[dict]:
        return self.rollouts.batches(self.example_batches(plan), plan)

    def private_records(self) -> int:
        raise ConfigError(f"privacy.*: method {self.name} cannot train under DP-SGD here: on-policy rollouts are not "
                          "drawn from Poisson-sampled records (use dp_opd, DP-OPD, or sft, kd)")

    def rollout(self, items: list[Encoded], model, *, seed: int, gate: bool) -> tuple[list[Encoded], dict]:
        return self.rollouts.rollout(items, model, seed=seed, gate=gate)

    def teacher(self, model):
        """What grades the rollouts (and samples with `seq_kd`): the run's teacher by default."""
        return self.run_teacher.open(model)

    @property
    def vocab(self):
        """Vocabulary columns the run's teacher shares with the student (None before it is opened)."""
        return self.run_teacher.vocab

    def with_seq_kd(self, *ways: set) -> tuple:
        """The capability sets `ways`, each with `generate` when the teacher samples (seq_kd)."""
        return tuple(set(w) | ({"generate"} if self.cfg.seq_kd else set()) for w in ways)


__all__ = ["OnPolicy", "RolloutConfig", "Rollouts"]

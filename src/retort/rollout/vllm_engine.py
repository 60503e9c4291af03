"""Rollouts through vLLM (a GPU with `pip install vllm`), for on-policy methods
(`method_args.engine=vllm`).

The engine is built once from a copy of the student saved at the start of the run; before each
rollout that follows an optimizer step, the student's current weights are pushed into the engine's
model in place (`load_weights`, the path TRL's and verl's colocated engines use), so samples always
come from the weights being trained. A weight version (the optimizer step) makes the push happen
once per step however many micro-batches sample in it. Tied input/output embeddings are pushed
once (vLLM ties them itself).

vLLM's in-process engine is needed for the push (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set here
before vLLM is imported); `engine_model` finds the model through the attribute paths of the vLLM
versions we know, and says so when it cannot.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterator, Optional

import torch

from ..errors import ModelError, require
from .generate import Completion

# where the driver worker's torch model sits, from newest to oldest vLLM layouts
_PATHS = (
    "llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner.model",
    "llm_engine.model_executor.driver_worker.worker.model_runner.model",
    "llm_engine.model_executor.driver_worker.model_runner.model",
)


def engine_model(llm):
    """The torch module inside a vLLM `LLM` whose `load_weights` takes (name, tensor) pairs."""
    for path in _PATHS:
        obj = llm
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None and hasattr(obj, "load_weights"):
            return obj
    raise ModelError("cannot reach the model inside this vLLM engine to update its weights (tried "
                     f"{', '.join(_PATHS)}); use method_args.engine=auto, or a vLLM version that has one of these")


def weights_to_push(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every weight of `model` in Hugging Face naming, the tied lm_head skipped."""
    model = getattr(model, "module", model)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        yield name, tensor.detach()


class WeightSync:
    """Push the student's weights into an engine model once per weight version."""

    def __init__(self, target):
        self.target = target
        self.version: Optional[int] = None
        self.pushes = 0

    def __call__(self, model, version: int) -> bool:
        if version == self.version:
            return False
        with torch.no_grad():
            self.target.load_weights(weights_to_push(model))
        self.version = version
        self.pushes += 1
        return True


class VLLMEngine:
    def __init__(self, model, tok, *, gpu_memory_utilization: float = 0.3, seed: int = 0, llm=None):
        if llm is None:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            require("vllm", "vllm", "method_args.engine=vllm")
            from vllm import LLM

            from ..models import save_model

            self._dir = tempfile.TemporaryDirectory(prefix="retort-vllm-")
            save_model(getattr(model, "module", model), tok, self._dir.name)
            dtype = next(model.parameters()).dtype
            llm = LLM(model=self._dir.name, tokenizer=self._dir.name, gpu_memory_utilization=gpu_memory_utilization,
                      dtype="bfloat16" if dtype == torch.bfloat16 else "auto", seed=seed, enable_prefix_caching=False)
        self.llm = llm
        self.sync = WeightSync(engine_model(llm))
        self.tok = tok

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int, eos_ids: set) -> list[Completion]:
        from vllm import SamplingParams

        params = SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                                stop_token_ids=sorted(eos_ids), skip_special_tokens=True)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        result = []
        for o in outs:
            c = o.outputs[0]
            tokens = list(c.token_ids)
            stopped = c.finish_reason == "stop"
            if tokens and tokens[-1] in eos_ids:
                tokens = tokens[:-1]
            result.append(Completion(self.tok.decode(tokens, skip_special_tokens=True), tokens,
                                     "stop" if stopped else "length"))
        return result

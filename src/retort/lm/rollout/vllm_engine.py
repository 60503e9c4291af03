"""Rollouts through vLLM (a GPU with `pip install vllm`), for on-policy methods
(`method_args.engine=vllm`).

The engine is built once from a copy of the student saved at the start of the run; before each
rollout that follows an optimizer step, the student's current weights are pushed into the engine's
model in place, so samples always come from the weights being trained. A weight version (the
optimizer step) makes the push happen once per step however many micro-batches sample in it. Tied
input/output embeddings are pushed once (vLLM ties them itself).

The push goes through vLLM's public `LLM.apply_model(func)` ("run a function directly on the model
inside each worker"), which calls the model's own `load_weights` with (Hugging Face name, tensor)
pairs; no private attribute of vLLM is touched. `LLM.apply_model` reaches the model of vLLM's V1
engine from vLLM 0.9.1 on (vllm-project/vllm#18465); older versions, or an `LLM` without the method,
are refused with a `ModelError` when the engine is built, not at the first push. The engine runs
in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set here before vLLM is imported), so the function
and the tensors it closes over are handed to the worker by reference, not serialized (in
multiprocess mode vLLM would need `VLLM_ALLOW_INSECURE_SERIALIZATION=1` and would copy every weight
across processes; that mode is refused).

Checked only against a fake `LLM` in the unit tests: this path has not been run on a GPU with a
real vLLM in this project's CI.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import torch

from ...errors import ModelError, require
from .generate import Completion

# the first vLLM release whose LLM.apply_model works on the V1 engine (vllm-project/vllm#18465)
MIN_VLLM = "0.9.1"
_INPROC = "VLLM_ENABLE_V1_MULTIPROCESSING"


def _has_load_weights(model) -> bool:
    return callable(getattr(model, "load_weights", None))


def check_engine(llm) -> None:
    """Fail now, and say why, unless `llm` takes weights through the public `LLM.apply_model`."""
    apply = getattr(llm, "apply_model", None)
    if not callable(apply):
        raise ModelError(f"this vLLM has no LLM.apply_model to update the engine's weights in place; "
                         f"method_args.engine=vllm needs vllm>={MIN_VLLM} (or use method_args.engine=auto)")
    try:
        found = apply(_has_load_weights)
    except (AttributeError, NotImplementedError) as e:  # 0.7-0.9.0: apply_model does not reach the V1 engine
        raise ModelError(f"LLM.apply_model does not work on this vLLM engine ({type(e).__name__}: {e}); "
                         f"method_args.engine=vllm needs vllm>={MIN_VLLM} (or use method_args.engine=auto)") from None
    if not found or not all(found):
        raise ModelError("the model inside this vLLM engine has no load_weights to take new weights; "
                         "use method_args.engine=auto")


def weights_to_push(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every weight of `model` in Hugging Face naming, the tied lm_head skipped."""
    model = getattr(model, "module", model)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        yield name, tensor.detach()


class WeightSync:
    """Push the student's weights into a vLLM `LLM` once per weight version, through `LLM.apply_model`."""

    def __init__(self, llm):
        check_engine(llm)
        self.llm = llm
        self.version: int | None = None
        self.pushes = 0

    def __call__(self, model, version: int) -> bool:
        if version == self.version:
            return False
        # a list, not a generator: every worker's model loads the same pairs (no copies: detached views)
        weights = list(weights_to_push(model))
        with torch.no_grad():
            self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        self.version = version
        self.pushes += 1
        return True


class VLLMEngine:
    def __init__(self, model, tok, *, gpu_memory_utilization: float = 0.3, seed: int = 0, llm=None):
        if llm is None:
            os.environ.setdefault(_INPROC, "0")
            if os.environ[_INPROC] != "0":
                raise ModelError(f"method_args.engine=vllm pushes weights into an in-process vLLM engine; "
                                 f"unset {_INPROC} or set it to 0 (it is {os.environ[_INPROC]!r})")
            require("vllm", "vllm", "method_args.engine=vllm")
            from vllm import LLM

            from ..models import save_model

            self._dir = tempfile.TemporaryDirectory(prefix="retort-vllm-")
            save_model(getattr(model, "module", model), tok, self._dir.name)
            dtype = next(model.parameters()).dtype
            llm = LLM(model=self._dir.name, tokenizer=self._dir.name, gpu_memory_utilization=gpu_memory_utilization,
                      dtype="bfloat16" if dtype == torch.bfloat16 else "auto", seed=seed, enable_prefix_caching=False)
        self.llm = llm
        self.sync = WeightSync(llm)
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

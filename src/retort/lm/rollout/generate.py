"""Batched generation with KV cache and left padding (the transformers engine).

`generate` returns, for each prompt, `num_samples` completions (text, token ids, finish reason).
Greedy when temperature is 0, else sampling with temperature and top-p, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..data.collate import chars_per_token_bound, encode_prompt
from ...errors import DataError
from . import fast


def _context(model) -> Optional[int]:
    """The model's context length in tokens, when its config states one."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS) or "length"
    # with generate_ids(scores=K) on the fast engine: the sampler's `fast.Scores` of token_ids plus,
    # when the completion stopped, the EOS step
    scores: Optional[object] = None


def generate(model, tok, prompts: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 1.0, num_samples: int = 1, batch_size: int = 64, seed: int = 0,
             stop: Optional[list[str]] = None, progress=None, engine: str = "auto",
             scores: Optional[int] = None) -> list[list[Completion]]:
    limit = _context(model)
    if limit is not None:
        # a prompt with more characters than the whole context could cover is refused before it
        # is tokenised (a 20 MB row would otherwise cost gigabytes to encode)
        bound = 4 * limit * chars_per_token_bound(tok)
        huge = [i for i, p in enumerate(prompts) if len(p) > bound]
        if huge:
            raise DataError(f"{len(huge)} of {len(prompts)} prompts are longer than the model's context of {limit} "
                            f"tokens could hold (the first is prompt #{huge[0] + 1}, {len(prompts[huge[0]]):,} "
                            "characters); shorten or drop them")
    return generate_ids(model, tok, [encode_prompt(tok, p) for p in prompts], max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, num_samples=num_samples, batch_size=batch_size,
                        seed=seed, stop=stop, progress=progress, engine=engine, scores=scores)


@torch.no_grad()
def generate_ids(model, tok, encoded: list[list[int]], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0, num_samples: int = 1, batch_size: int = 64, seed: int = 0,
                 stop: Optional[list[str]] = None, progress=None, engine: str = "auto",
                 scores: Optional[int] = None, processors=None, dtype=None) -> list[list[Completion]]:
    """`generate` from prompt token ids (already templated). engine: `hf` (transformers' `generate`),
    `fast` (retort.lm.rollout.fast, Llama-family and Gemma 3 decoders, no stop strings) or `auto`
    (fast when it applies). `scores=K`: when the fast engine samples, each Completion also carries the model's
    log-probs (and top-K) at its tokens, from the sampling pass (`fast.sample`); None otherwise.
    `processors(width)`: transformers logits processors for a batch whose prompts are left-padded
    to `width` tokens (the hf engine only). `dtype`: the fast engine samples with the weights rounded to
    it (`fast.sample`); the hf engine refuses it."""
    if engine not in ("auto", "hf", "fast"):
        raise ValueError(f"engine must be auto, hf or fast, got {engine!r}")
    limit = _context(model)
    over = [i for i, ids in enumerate(encoded) if limit is not None and len(ids) + max_new_tokens > limit]
    if over:
        longest = max(len(encoded[i]) for i in over)
        raise DataError(f"{len(over)} of {len(encoded)} prompts do not fit the model's context of {limit} tokens with "
                        f"max_new_tokens={max_new_tokens} (the longest has {longest} tokens); shorten or drop them, "
                        "or lower max_new_tokens")
    use_fast = engine == "fast" or (engine == "auto" and not stop and not processors and fast.supports(model))
    if use_fast and (stop or processors or not fast.supports(model)):
        why = fast.why_not(model) or ("stop strings" if stop else "logits processors")
        raise ValueError(f"the fast engine needs a Llama-family or Gemma 3 model, no stop strings and no logits "
                         f"processors ({why}); use engine=hf (or auto, which picks hf here)")
    if dtype is not None and not use_fast:
        raise ValueError(f"sampling in {dtype} is a fast-engine option; this model samples with transformers' "
                         f"generate ({fast.why_not(model) or 'engine=hf, stop strings or logits processors'})")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos_ids = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tok.eos_token_id
    eos_set = set(eos_ids if isinstance(eos_ids, list) else [eos_ids])
    # Sort by length so each batch pads little; results go back in input order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[list[Completion]] = [[] for _ in encoded]
    sampling = temperature > 0
    gen = torch.Generator().manual_seed(seed)
    per_batch = max(1, batch_size // num_samples) if sampling else batch_size
    for start in range(0, len(order), per_batch):
        idx = order[start:start + per_batch]
        reps = num_samples if sampling else 1
        batch_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) if sampling else 0
        if use_fast:
            rng = torch.Generator(device=device).manual_seed(batch_seed)
            seqs = fast.sample(model, [encoded[i] for i in idx for _ in range(reps)], max_new_tokens=max_new_tokens,
                               eos_ids=eos_set, pad_id=pad_id, temperature=temperature, top_p=top_p, generator=rng,
                               scores=scores, dtype=dtype)
            for row, seq in enumerate(seqs):
                seq, sc = seq if scores is not None else (seq, None)
                stopped = bool(seq) and seq[-1] in eos_set
                tokens = seq[:-1] if stopped else seq
                results[idx[row // reps]].append(
                    Completion(tok.decode(tokens, skip_special_tokens=True), tokens, "stop" if stopped else "length",
                               sc))
            if progress is not None:
                progress(len(idx))
            continue
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        ids, mask = ids.repeat_interleave(reps, 0).to(device), mask.repeat_interleave(reps, 0).to(device)
        kwargs = dict(do_sample=sampling, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                      eos_token_id=list(eos_set), use_cache=True)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=tok)
        if processors is not None:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(processors(width))
        if sampling:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        # Sampling draws from the global RNG; fork it so that evaluating inside a training run
        # leaves the run's random streams (and so its exact resumability) untouched.
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if sampling:
                torch.manual_seed(batch_seed)
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, width:].tolist()
        for row, seq in enumerate(out):
            cut = next((j for j, t in enumerate(seq) if t in eos_set), None)
            tokens = seq if cut is None else seq[:cut]
            reason = "length" if cut is None else "stop"
            text = tok.decode(tokens, skip_special_tokens=True)
            if cut is None and stop:
                # A stop string ends a row early; the rest of the batch row is padding.
                while tokens and tokens[-1] == pad_id:
                    tokens = tokens[:-1]
                text = tok.decode(tokens, skip_special_tokens=True)
                if any(text.endswith(s_) for s_ in stop):
                    reason = "stop"
            comp = Completion(text, tokens, reason)
            results[idx[row // reps]].append(comp)
        if progress is not None:
            progress(len(idx))
    if not sampling and num_samples > 1:
        results = [r * num_samples for r in results]
    model.train(was_training)
    return results

"""A lean sampling loop for Llama-family and Gemma 3 decoders (the `fast` rollout engine).

`transformers`' `generate` spends most of a small model's decode step in Python: generation
utilities, logits processors and several wrapper layers around every module call. For the models
on-policy distillation samples from at every step on a CPU (retort's presets, layer-pruned
SmolLM2-size students) that overhead is most of the rollout time. This engine runs the same
arithmetic directly on the model's own weights: embedding, per layer RMSNorm -> one q/k/v matmul
-> rotary (cos/sin from the model's own rotary embedding, tabulated once per call) ->
scaled-dot-product attention over a preallocated KV cache -> o_proj -> RMSNorm -> gate/up, act,
down, final norm, lm_head; left padding is handled with per-row positions and one additive key
bias, as `generate` does. Optionally (`scores`) it keeps the log-probs of what it samples.

It applies to `LlamaForCausalLM` and architectures with the same block (Mistral, Qwen2/Qwen3 and
SmolLM are all `llama`-shaped when their config has no sliding window and, for Qwen3, no q/k
norms — those are refused and go to `generate`; `why_not` says why), and Gemma 3's text decoder
(q/k norms, sandwich norms, sliding-window layers, soft-capped logits). Greedy decoding gives the
tokens of `generate` (tested, also on the packaged Qwen2.5-Coder-0.5B and Gemma-3-270m);
sampling draws from the same distribution (temperature, top-p) with its own seeded RNG. A PEFT
LoRA model (a `student.lora` run) is run through its base model, every projection's weight
taken as base + B A * scaling (nothing added while its adapters are disabled); greedy tokens equal
`generate` on it too (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ... import threads as threads_setting
import torch.nn.functional as F

SUPPORTED = {"llama", "mistral", "qwen2", "gemma3_text"}
# Gemma 3's text decoder: per-head q/k RMSNorms before the rotary embedding, four (1 + w) norms per
# block (before and after attention and MLP), sliding-window layers with their own rotary table,
# scaled embeddings (inside its embedding module) and an optional final logit soft-cap
GEMMA3 = {"gemma3_text"}
# families retort could meet that this engine does not run, and why: `auto` uses hf
NOT_COVERED = {"gemma3": "the multimodal Gemma 3 wrapper (its text model, gemma3_text, is covered)"}


def engine_for(model_type: str) -> str:
    """The engine `engine=auto` samples a `model_type` with, in words (for `retort models`)."""
    if model_type in SUPPORTED:
        return "fast (retort.lm.rollout.fast)"
    why = NOT_COVERED.get(model_type, "not Llama-shaped")
    return f"hf (transformers' generate; the fast engine does not cover {model_type}: {why})"


def _base(model):
    """The transformers model under a PEFT wrapper (its LoRA layers in place), else `model`."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def why_not(model) -> Optional[str]:
    """None when the fast engine runs `model`, else why not, in a phrase (`generate_ids` names it
    when `engine=fast` is asked for); `engine=auto` then runs transformers' `generate` (engine hf)."""
    model = _base(model)
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if cfg is None or kind not in SUPPORTED:
        return (f"architecture {kind or type(model).__name__!r} is not Llama-shaped"
                + (f" ({NOT_COVERED[kind]})" if kind in NOT_COVERED else "")
                + f"; the fast engine runs {', '.join(sorted(SUPPORTED))}")
    if kind in GEMMA3:
        if getattr(cfg, "attn_logit_softcapping", None) or getattr(cfg, "use_bidirectional_attention", False):
            return f"{kind} with attention-logit soft-capping or bidirectional attention"
    elif getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) and kind != "llama":
        return f"{kind} with sliding-window attention"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return f"{type(model).__name__} has no model.layers / rotary_emb"
    if hasattr(inner.layers[0].self_attn, "q_norm") and kind not in GEMMA3:
        return f"{kind} with q/k norms"
    act = _activation(cfg)
    if act not in ("silu", "gelu", "gelu_pytorch_tanh"):
        return f"activation {act!r}"
    return None


def _activation(cfg) -> str:
    # Gemma 3's config names it hidden_activation (gelu_pytorch_tanh) and has no hidden_act
    return getattr(cfg, "hidden_act", None) or getattr(cfg, "hidden_activation", None) or "silu"


def supports(model) -> bool:
    return why_not(model) is None


def _rms(x, norm):
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32:  # one fused op
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    # as transformers' LlamaRMSNorm in a model of x's dtype (weight in that dtype); fp32 weights of an
    # fp32 model sampled in bf16 (`dtype`) are rounded the same way
    return norm.weight.to(x.dtype) * h.to(x.dtype)


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class _Cache:
    def __init__(self, n_layers, batch, kv_heads, max_len, head_dim, dtype, device):
        self.k = torch.empty((n_layers, batch, kv_heads, max_len, head_dim), dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)


def _linear(layer, dtype=None):
    """(weight, bias) a linear layer applies now (LoRA adapters folded in, `effective_weight`), in
    `dtype` when given (a copy: `sample(dtype=...)`)."""
    from ..models.lora import effective_weight

    w, b = effective_weight(layer), getattr(getattr(layer, "base_layer", layer), "bias", None)
    if dtype is not None:
        w, b = w.to(dtype), None if b is None else b.to(dtype)
    return w, b


def _rot_rows(w, n_heads, hd):
    """The rows that give rotate_half of a projection's per-head output: (x1, x2) -> (-x2, x1)."""
    w = w.reshape(n_heads, 2, hd // 2, *w.shape[1:])
    return torch.cat([-w[:, 1], w[:, 0]], dim=1).reshape(n_heads * hd, *w.shape[3:])


class _Weights:
    """Per `sample` call (training changes the weights between calls): per layer, q/k/v as one
    matrix — with `fold_rotary`, also the rows of rotate_half(q) and rotate_half(k), so that the
    rotary embedding costs no extra ops — gate/up as one, and o/down/lm_head as plain (weight,
    bias): the decode step then calls F.linear directly instead of modules (a small model's decode
    step is bound by per-op overhead, not arithmetic)."""

    def __init__(self, model, heads, kv_heads, hd, fold_rotary: bool, dtype=None):
        self.layers = []
        for layer in model.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            (qw, qb), (kw, kb), (vw, vb) = (_linear(a.q_proj, dtype), _linear(a.k_proj, dtype),
                                            _linear(a.v_proj, dtype))
            ws, bs = [qw, kw, vw], [qb, kb, vb]
            if fold_rotary:
                ws += [_rot_rows(qw, heads, hd), _rot_rows(kw, kv_heads, hd)]
                bs += [None if qb is None else _rot_rows(qb, heads, hd), None if kb is None else _rot_rows(kb, kv_heads, hd)]
            qkv_w = torch.cat(ws)
            qkv_b = torch.cat(bs) if qb is not None else None
            gate_up = None
            if hasattr(mlp, "gate_proj"):
                (gw, gb), (uw, ub) = _linear(mlp.gate_proj, dtype), _linear(mlp.up_proj, dtype)
                if gb is None and ub is None:
                    gate_up = torch.cat([gw, uw])
            self.layers.append((qkv_w, qkv_b, _linear(a.o_proj, dtype), gate_up,
                                _linear(mlp.down_proj, dtype) if gate_up is not None else None))
        self.head = _linear(model.lm_head, dtype)
        self.dtype = dtype


def _forward(model, wts: _Weights, ids, rope, key_bias, cache: _Cache, start: int, fold_rotary: bool):
    """Logits of the last position for `ids` (B, T) written at cache slots start..start+T-1.
    `rope` = (cos, sin) at these positions, (B, 1, T, hd); `key_bias` (B, 1, T, start+T): 0 where a
    query may attend, -inf elsewhere."""
    inner, cfg = model.model, model.config
    x = inner.embed_tokens(ids)  # Gemma 3's embedding module scales by sqrt(hidden) itself
    if wts.dtype is not None:
        x = x.to(wts.dtype)
    gemma = cfg.model_type in GEMMA3
    b, t, _ = x.shape
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", heads) or heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    end = start + t
    nq, nkv = heads * hd, kv_heads * hd
    silu = _activation(cfg) == "silu"
    for i, (layer, (qkv_w, qkv_b, (o_w, o_b), gate_up, down)) in enumerate(zip(inner.layers, wts.layers)):
        attn = layer.self_attn
        kind = cfg.layer_types[i] if gemma else None
        cos, sin = rope[kind] if gemma else rope
        h = layer.input_layernorm(x) if gemma else _rms(x, layer.input_layernorm)
        qkv = F.linear(h, qkv_w, qkv_b)
        # rotary on q and k at once: (b, heads + kv_heads, t, hd)
        qk = qkv[..., :nq + nkv].view(b, t, heads + kv_heads, hd).transpose(1, 2)
        if gemma:  # per-head RMSNorm of q and k before the rotation (never folded: fold=False)
            qk = torch.cat([attn.q_norm(qk[:, :heads]), attn.k_norm(qk[:, heads:])], dim=1)
        # rotate_half(q), rotate_half(k): folded into the projection (rows after v), or computed
        rot = (qkv[..., nq + 2 * nkv:].view(b, t, heads + kv_heads, hd).transpose(1, 2) if fold_rotary
               else _rotate_half(qk))
        qk = qk * cos + rot * sin
        q, k = qk[:, :heads], qk[:, heads:]
        v = qkv[..., nq + nkv:nq + 2 * nkv].view(b, t, kv_heads, hd).transpose(1, 2)
        ck, cv = cache.k[i], cache.v[i]
        ck[:, :, start:end] = k
        cv[:, :, start:end] = v
        keys, vals = ck[:, :, :end], cv[:, :, :end]
        scale = getattr(attn, "scaling", None) or hd ** -0.5
        bias = key_bias[kind] if gemma else key_bias
        if kv_heads != heads:
            # grouped-query attention without copying the cache per query head (repeat_interleave
            # copied every layer's whole KV cache at every step: 10% of a SmolLM2 decode, profiled):
            # the g query heads of a kv head become g x t queries of that head
            g = heads // kv_heads
            q = q.reshape(b, kv_heads, g * t, hd)
            if t > 1:
                bias = bias.repeat(1, 1, g, 1)
        o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=bias, scale=scale)
        o = F.linear(o.reshape(b, heads, t, hd).transpose(1, 2).reshape(b, t, nq), o_w, o_b)
        if gemma:  # norms after attention and around the MLP
            x = x + layer.post_attention_layernorm(o)
            h = layer.pre_feedforward_layernorm(x)
        else:
            x = x + o
            h = _rms(x, layer.post_attention_layernorm)
        mlp = layer.mlp
        if gate_up is not None:
            g, u = F.linear(h, gate_up).chunk(2, dim=-1)
            m = F.linear((F.silu(g) if silu else mlp.act_fn(g)) * u, *down)
        else:
            m = mlp(h)
        x = x + (layer.post_feedforward_layernorm(m) if gemma else m)
    x = inner.norm(x[:, -1:]) if gemma else _rms(x[:, -1:], inner.norm)
    logits = F.linear(x, *wts.head)[:, 0].float()
    cap = getattr(cfg, "final_logit_softcapping", None) if gemma else None
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.no_grad()
def sample(model, prompts: list[list[int]], *, max_new_tokens: int, eos_ids: set, pad_id: int,
           temperature: float = 0.0, top_p: float = 1.0, generator: Optional[torch.Generator] = None,
           fold_rotary: Optional[bool] = None, scores: Optional[int] = None,
           dtype: torch.dtype | None = None) -> list:
    """New tokens for each prompt (left-padded batch), up to and including the first EOS.
    `fold_rotary`: compute rotate_half(q), rotate_half(k) inside the q/k/v matmul (default: for
    small models, whose decode step is bound by the number of ops, not by arithmetic).
    `scores=K` (K >= 0): also return, per prompt, what `retort.lm.rollout.score` would compute from the
    logits the sampler had anyway — `Scores` with the model's own (temperature-1) log-prob of each
    new token and, for K > 0, its top-K ids, log-probs and the tail's log-mass at each step — as
    (tokens, Scores) pairs; this saves the teacher-forced scoring pass of `retort traces`.
    `dtype` (e.g. torch.bfloat16 for an fp32 model): sample with the weights, activations and KV cache
    rounded to it (copies made per call; the model is untouched), as a bf16 inference copy of the
    model would (vLLM beside an fp32 trainer). On CPUs with bf16 matrix units (AMX) this makes a
    real-size decode step ~3x faster; the samples then come from the rounded model, not exactly
    the trained one (logits and `scores` are float32 either way)."""
    model = _base(model)
    device = next(model.parameters()).device
    # A small model's decode step is a hundred tiny ops; on a CPU, waking a second OpenMP thread for
    # each costs more than it saves (measured: 0.18 s vs 0.22 s per 32 x 40-token batch of the
    # 167k student) — unless the batch makes the ops big (the 1.8M teacher at 500 rows: 2 threads
    # 1.3x faster, benchmarks/traces.py). The threshold lives in retort.threads.
    threads = torch.get_num_threads()
    n_params = sum(p.numel() for p in model.parameters())
    small = device.type == "cpu" and n_params < 20_000_000
    one_thread = small and threads_setting.auto(n_params, len(prompts)) == 1  # never when `threads` is pinned
    if one_thread:
        torch.set_num_threads(1)
    try:
        return _sample(model, prompts, max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                       temperature=temperature, top_p=top_p, generator=generator, device=device,
                       fold=small if fold_rotary is None else fold_rotary, scores=scores, dtype=dtype)
    finally:
        if one_thread:
            torch.set_num_threads(threads)


def _draw(probs, generator):
    """One token per row from (unnormalised) `probs` (B, V) by inverting the cumulative sum at one
    uniform draw per row. torch.multinomial draws an exponential variable per vocabulary entry:
    with 64 rows of SmolLM2's 49k vocabulary that was 80 ms a step, 9% of a traces batch (profiled).
    The cumulative sum is taken in two levels, both in float64 so that rounding moves no mass
    between tokens: over blocks' sums (a vectorised float32 sum of `bs` entries each), then inside
    the one block drawn (a float64 cumsum of the whole row was 4% of a Qwen2.5-0.5B decode, its
    152k-entry vocabulary)."""
    b, v = probs.shape
    bs = next((w for w in (1024, 512, 256, 128, 64) if v % w == 0), None)
    if bs is None:  # pad to whole blocks with zero mass
        bs = 256
        probs = F.pad(probs, (0, -v % bs))
    blocks = probs.view(b, -1, bs)
    mass = blocks.sum(-1).double()
    ends = mass.cumsum(-1)
    u = torch.rand((b, 1), generator=generator, device=probs.device, dtype=torch.float64) * ends[:, -1:]
    # right=True: the first entry whose cumulative mass exceeds u, so a block or token of zero mass
    # (a flat step) is never drawn
    blk = torch.searchsorted(ends, u, right=True).clamp_max(blocks.shape[1] - 1)
    inside = blocks[torch.arange(b, device=probs.device), blk[:, 0]].double().cumsum(-1)
    # u's place inside its block, scaled to the block's own cumsum (its float32 sum may differ by an ulp)
    at = (u - (ends.gather(1, blk) - mass.gather(1, blk))) / mass.gather(1, blk) * inside[:, -1:]
    tok = blk * bs + torch.searchsorted(inside, at, right=True).clamp_max(bs - 1)
    return tok[:, 0].clamp_max(v - 1)


@dataclass
class Scores:
    logprobs: list          # per new token (EOS included when sampled)
    topk_ids: Optional[list] = None
    topk_logprobs: Optional[list] = None
    topk_tail: Optional[list] = None


def _sample(model, prompts, *, max_new_tokens, eos_ids, pad_id, temperature, top_p, generator, device, fold,
            scores=None, dtype=None):
    cast = dtype if dtype is not None and dtype != next(model.parameters()).dtype else None
    dtype = cast or next(model.parameters()).dtype
    b = len(prompts)
    width = max(len(p) for p in prompts)
    total = width + max_new_tokens
    ids = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    key_mask = torch.zeros((b, total), dtype=torch.bool, device=device)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, device=device)
        key_mask[r, width - len(p):] = True  # prompt tokens and every generated slot
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", heads) or heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    cache = _Cache(cfg.num_hidden_layers, b, kv_heads, total, hd, dtype, device)
    positions = (key_mask[:, :width].long().cumsum(-1) - 1).clamp_min(0)
    next_pos = key_mask[:, :width].sum(-1, keepdim=True)
    eos = torch.tensor(sorted(eos_ids), device=device)
    gemma = cfg.model_type in GEMMA3
    fold = fold and not gemma  # q/k are normalised between the projection and the rotation
    wts = _Weights(model, heads, kv_heads, hd, fold, cast)
    inner = model.model
    probe = torch.zeros((1, 1, cfg.hidden_size), dtype=dtype, device=device)
    # Gemma 3: one rotary table per layer type (sliding layers have their own base)
    kinds = sorted(set(cfg.layer_types)) if gemma else [None]
    rope_types = getattr(inner.rotary_emb, "rope_type", "default")
    rope_types = list(rope_types.values()) if isinstance(rope_types, dict) else [rope_types]
    static_rope = all(r in ("default", "linear", "llama3") for r in rope_types)

    def rotary(pos, kind):
        return inner.rotary_emb(probe, pos, kind) if kind else inner.rotary_emb(probe, pos)

    if static_rope:  # cos/sin of every position once; the decode steps gather rows of the table
        tables = {k: tuple(c[0] for c in rotary(torch.arange(total, device=device)[None], k)) for k in kinds}

    def rope(pos):  # pos (B, T) -> cos, sin (B, 1, T, hd), per layer type for Gemma 3
        out = {}
        for k in kinds:
            c, s = (tables[k][0][pos], tables[k][1][pos]) if static_rope else rotary(pos, k)
            out[k] = (c.unsqueeze(1), s.unsqueeze(1))
        return out if gemma else out[None]

    window = getattr(cfg, "sliding_window", None) if gemma else None

    def biases(full, q_slots, end):  # Gemma 3: the sliding layers see only the last `window` slots
        if not gemma:
            return full
        k_slots = torch.arange(end, device=device)
        near = k_slots[None, :] > q_slots[:, None] - window  # (T, end), as transformers' sliding mask
        return {"full_attention": full, "sliding_attention": full.masked_fill(~near, float("-inf"))}

    # prefill: causal and key padding; a row with no visible key (left padding) sees itself
    causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
    mask = causal[None, None] & key_mask[:, None, None, :width]
    mask = mask | ~mask.any(-1, keepdim=True)
    zero = torch.zeros((), dtype=dtype, device=device)
    neg = torch.tensor(float("-inf"), dtype=dtype, device=device)
    prefill_bias = torch.where(mask, zero, neg)
    if gemma:  # a left-padding query that sees no key in the window sees itself, as above
        slots = torch.arange(width, device=device)
        sliding = mask & (slots[None, :] > slots[:, None] - window)
        sliding = sliding | ~sliding.any(-1, keepdim=True)
        prefill_bias = {"full_attention": prefill_bias, "sliding_attention": torch.where(sliding, zero, neg)}
    # the N samples of a prompt are N equal rows: their prefill is computed once and its KV cache
    # copied (with 4 samples of a 130-token prompt and 32 new tokens, the prompt's forwards were
    # 4/5 of the work of a SmolLM2 traces batch)
    first: dict = {}
    inverse = torch.tensor([first.setdefault(tuple(p), r) for r, p in enumerate(prompts)], device=device)
    if len(first) < b:
        reps = torch.tensor(list(first.values()), device=device)
        slot = torch.empty(b, dtype=torch.long, device=device)
        slot[reps] = torch.arange(len(reps), device=device)
        inverse = slot[inverse]  # row -> its prompt's row in the shared prefill
        shared = _Cache(cfg.num_hidden_layers, len(reps), kv_heads, width, hd, dtype, device)
        pick = (lambda m: {k: v[reps] for k, v in m.items()}) if gemma else (lambda m: m[reps])
        logits = _forward(model, wts, ids[reps], rope(positions[reps]), pick(prefill_bias), shared, 0, fold)[inverse]
        cache.k[:, :, :, :width] = shared.k[:, inverse]
        cache.v[:, :, :, :width] = shared.v[:, inverse]
        del shared
    else:
        logits = _forward(model, wts, ids, rope(positions), prefill_bias, cache, 0, fold)
    # decode: one query per row sees its real keys (the prompt without padding, every new slot)
    decode_bias = torch.where(key_mask, zero, neg)[:, None, None, :]
    out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    pad = torch.full((b,), pad_id, dtype=torch.long, device=device)
    n = 0
    kept_lp, kept_ids, kept_vals, kept_tail = [], [], [], []
    for step in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            if top_p < 1.0:
                sp, si = probs.sort(dim=-1, descending=True)
                drop = sp.cumsum(-1) - sp > top_p  # keep the smallest prefix reaching top_p
                sp = sp.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter_(-1, si, sp)
            tok = _draw(probs, generator)
        else:
            tok = logits.argmax(-1)
        tok = torch.where(done, pad, tok)
        out[:, step] = tok
        n = step + 1
        if scores is not None:  # the model's own distribution (temperature 1), as `score` gives it
            lsm = torch.log_softmax(logits.float(), dim=-1)
            kept_lp.append(lsm.gather(1, tok[:, None])[:, 0])
            if scores:
                vals, idx = lsm.topk(min(scores, lsm.shape[-1]), dim=-1)
                kept_ids.append(idx)
                kept_vals.append(vals)
                kept_tail.append(lsm.scatter(-1, idx, float("-inf")).logsumexp(-1))
        done |= torch.isin(tok, eos)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        end = width + step + 1
        bias = biases(decode_bias[..., :end], torch.tensor([end - 1], device=device), end)
        logits = _forward(model, wts, tok[:, None], rope(next_pos), bias, cache, width + step, fold)
        next_pos = next_pos + 1
    rows = out[:, :n].tolist()
    result = []
    for r, seq in enumerate(rows):
        cut = next((j for j, t in enumerate(seq) if t in eos_ids), None)
        result.append(seq if cut is None else seq[:cut + 1])
    if scores is None:
        return result
    lp = torch.stack(kept_lp, 1).tolist()
    if scores:
        ids, vals, tail = (torch.stack(x, 1).tolist() for x in (kept_ids, kept_vals, kept_tail))
    return [(seq, Scores(lp[r][:len(seq)], *((ids[r][:len(seq)], vals[r][:len(seq)], tail[r][:len(seq)])
                                            if scores else ())))
            for r, seq in enumerate(result)]

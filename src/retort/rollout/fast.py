"""A lean sampling loop for Llama-family decoders (the `fast` rollout engine).

`transformers`' `generate` spends most of a small model's decode step in Python: generation
utilities, logits processors and several wrapper layers around every module call. For the models
on-policy distillation samples from at every step on a CPU (retort's presets, layer-pruned
SmolLM2-size students) that overhead is most of the rollout time. This engine runs the same
arithmetic directly on the model's own weights and modules: embedding, per layer RMSNorm ->
q/k/v -> the model's own rotary embedding -> scaled-dot-product attention over a preallocated KV
cache -> o_proj -> RMSNorm -> the model's own MLP, final norm, lm_head; left padding is handled with
per-row positions and a key mask, as `generate` does.

It applies to `LlamaForCausalLM` and architectures with the same block (Mistral, Qwen2/Qwen3 and
SmolLM are all `llama`-shaped when their config has no sliding window and, for Qwen3, no q/k
norms — those are refused and go to `generate`). Greedy decoding gives the tokens of `generate`
(tested); sampling draws from the same distribution (temperature, top-p) with its own seeded RNG.
A PEFT LoRA model (a `student.lora` run) is run through its base model's modules, with the fused
q/k/v and gate/up weights taken as base + B A * scaling (nothing added while its adapters are
disabled); the other layers are called, so PEFT applies their adapters.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

SUPPORTED = {"llama", "mistral", "qwen2"}


def _base(model):
    """The transformers model under a PEFT wrapper (its LoRA layers in place), else `model`."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model) -> bool:
    model = _base(model)
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED:
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) \
            and cfg.model_type != "llama":
        return False
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return False
    attn = inner.layers[0].self_attn
    return not hasattr(attn, "q_norm") and getattr(cfg, "hidden_act", "silu") in ("silu", "gelu", "gelu_pytorch_tanh")


def _rms(x, norm):
    if x.dtype == torch.float32:  # one fused op
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class _Cache:
    def __init__(self, n_layers, batch, kv_heads, max_len, head_dim, dtype, device):
        self.k = torch.empty((n_layers, batch, kv_heads, max_len, head_dim), dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)


def _fused_weights(model):
    """Per layer: q/k/v as one matrix (and bias), gate/up as one — fewer, larger matmuls. Built per
    `sample` call, since training changes the weights between calls."""
    from ..models.lora import effective_weight as w

    out = []
    for layer in model.model.layers:
        a, mlp = layer.self_attn, layer.mlp
        qkv_w = torch.cat([w(a.q_proj), w(a.k_proj), w(a.v_proj)])
        qkv_b = (torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]) if a.q_proj.bias is not None else None)
        gate_up = (torch.cat([w(mlp.gate_proj), w(mlp.up_proj)])
                   if hasattr(mlp, "gate_proj") and mlp.gate_proj.bias is None and mlp.up_proj.bias is None else None)
        out.append((qkv_w, qkv_b, gate_up))
    return out


def _forward(model, fused, ids, positions, key_mask, cache: _Cache, start: int):
    """Logits of the last position for `ids` (B, T) written at cache slots start..start+T-1.
    key_mask (B, start+T) marks real (non-pad) keys."""
    inner, cfg = model.model, model.config
    x = inner.embed_tokens(ids)
    cos, sin = inner.rotary_emb(x, positions)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    b, t, _ = x.shape
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", heads) or heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    end = start + t
    causal = torch.ones((t, end), dtype=torch.bool, device=x.device).tril(diagonal=start)
    mask = causal[None, None] & key_mask[:, None, None, :end]
    # a row with no visible key (left padding in the prompt) would give NaN; let it see itself
    mask = mask | ~mask.any(-1, keepdim=True)
    bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(~mask, float("-inf"))
    nq, nkv = heads * hd, kv_heads * hd
    for i, (layer, (qkv_w, qkv_b, gate_up)) in enumerate(zip(inner.layers, fused)):
        attn = layer.self_attn
        h = _rms(x, layer.input_layernorm)
        qkv = F.linear(h, qkv_w, qkv_b)
        # rotary on q and k at once: (b, heads + kv_heads, t, hd)
        qk = qkv[..., :nq + nkv].view(b, t, heads + kv_heads, hd).transpose(1, 2)
        qk = qk * cos + _rotate_half(qk) * sin
        q, k = qk[:, :heads], qk[:, heads:]
        v = qkv[..., nq + nkv:].view(b, t, kv_heads, hd).transpose(1, 2)
        cache.k[i, :, :, start:end] = k
        cache.v[i, :, :, start:end] = v
        keys, vals = cache.k[i, :, :, :end], cache.v[i, :, :, :end]
        if kv_heads != heads:
            keys = keys.repeat_interleave(heads // kv_heads, dim=1)
            vals = vals.repeat_interleave(heads // kv_heads, dim=1)
        scale = getattr(attn, "scaling", None) or hd ** -0.5
        o = torch.softmax(torch.matmul(q, keys.transpose(-1, -2)).mul_(scale).add_(bias), dim=-1) @ vals
        x = x + attn.o_proj(o.transpose(1, 2).reshape(b, t, nq))
        h = _rms(x, layer.post_attention_layernorm)
        mlp = layer.mlp
        if gate_up is not None:
            g, u = F.linear(h, gate_up).chunk(2, dim=-1)
            x = x + mlp.down_proj(mlp.act_fn(g) * u)
        else:
            x = x + mlp(h)
    x = _rms(x[:, -1:], inner.norm)
    return model.lm_head(x)[:, 0].float()


@torch.no_grad()
def sample(model, prompts: list[list[int]], *, max_new_tokens: int, eos_ids: set, pad_id: int,
           temperature: float = 0.0, top_p: float = 1.0, generator: Optional[torch.Generator] = None
           ) -> list[list[int]]:
    """New tokens for each prompt (left-padded batch), up to and including the first EOS."""
    model = _base(model)
    device = next(model.parameters()).device
    # A small model's decode step is a hundred tiny ops; on a CPU, waking a second OpenMP thread for
    # each costs more than it saves (measured: 0.18 s vs 0.22 s per 32 x 40-token batch).
    threads = torch.get_num_threads()
    small = device.type == "cpu" and sum(p.numel() for p in model.parameters()) < 20_000_000
    if small:
        torch.set_num_threads(1)
    try:
        return _sample(model, prompts, max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                       temperature=temperature, top_p=top_p, generator=generator, device=device)
    finally:
        if small:
            torch.set_num_threads(threads)


def _sample(model, prompts, *, max_new_tokens, eos_ids, pad_id, temperature, top_p, generator, device):
    dtype = next(model.parameters()).dtype
    b = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    key_mask = torch.zeros((b, width + max_new_tokens), dtype=torch.bool, device=device)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, device=device)
        key_mask[r, width - len(p):width] = True
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", heads) or heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    cache = _Cache(cfg.num_hidden_layers, b, kv_heads, width + max_new_tokens, hd, dtype, device)
    positions = (key_mask[:, :width].long().cumsum(-1) - 1).clamp_min(0)
    next_pos = key_mask[:, :width].sum(-1, keepdim=True)
    eos = torch.tensor(sorted(eos_ids), device=device)
    fused = _fused_weights(model)
    logits = _forward(model, fused, ids, positions, key_mask, cache, 0)
    out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    n = 0
    for step in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            if top_p < 1.0:
                sp, si = probs.sort(dim=-1, descending=True)
                drop = sp.cumsum(-1) - sp > top_p  # keep the smallest prefix reaching top_p
                sp = sp.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter_(-1, si, sp)
            tok = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            tok = logits.argmax(-1)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        out[:, step] = tok
        n = step + 1
        done |= torch.isin(tok, eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        key_mask[:, width + step] = True
        logits = _forward(model, fused, tok[:, None], next_pos, key_mask, cache, width + step)
        next_pos = next_pos + 1
    rows = out[:, :n].tolist()
    result = []
    for r, seq in enumerate(rows):
        cut = next((j for j, t in enumerate(seq) if t in eos_ids), None)
        result.append(seq if cut is None else seq[:cut + 1])
    return result

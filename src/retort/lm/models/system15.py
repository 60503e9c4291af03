"""The System-1.5 student (Wang et al., System-1.5 Reasoning: Traversal in Language and Latent Spaces
with Dynamic Shortcuts, NeurIPS 2025, arXiv:2505.18962): a Llama-family causal LM that reasons in
latent steps (continuous thoughts, Coconut/CODI style: the last hidden state, through a small
projection, is the next input embedding) and spends compute unevenly through two shortcuts.

- Depth shortcut: decoder layer l has a router R_l (FFN + sigmoid) and a light adapter g_l. Training
  mixes, at every generated position (latent steps and answer tokens),
      w = R_l(h_{l-1}),   h_l = w * g_l(h_{l-1}) + (1 - w) * f_l(h_{l-1});
  inference takes the adapter where w > 1 - lambda_depth and runs the layer f_l elsewhere.
- Step shortcut: a step router s_j = R_step(h_{j-1}) (plus a learned bias per step) mixes in training
  h_j = s_j * h_{j-1} + (1 - s_j) * F(e_j); inference skips latent step j where s_j > 1 - lambda_step:
  no forward pass, h_j = h_{j-1}, and the step takes no place among the keys later positions read.

retort's thresholds run the other way from the paper's ("R > lambda: exit"): lambda = 0 is the full
path (every layer, every step; the shortcut modules are never read, so the outputs are bitwise those of
the model without them) and lambda = 1 takes every shortcut. The prompt is always read on the full
path. A position whose layer is shortcut still writes that layer's keys and values (from its layer
input: two projections), so later positions attend over it as they did in training (CALM's state
propagation); its attention output and MLP are what is skipped.

Saved as a Hugging Face model of its own type (`retort-system15`, safetensors): the base model's
weights under `base.`, the shortcut modules beside them. `register()` makes AutoModelForCausalLM
load it (retort's own code: no remote code). Supported bases: Llama and Qwen2 decoders.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    DynamicCache,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.masking_utils import create_causal_mask

from ...errors import ModelError

MODEL_TYPE = "retort-system15"
SUPPORTED = ("llama", "qwen2")


class System15Config(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, base: dict | None = None, latent_steps: int = 6, adapter_rank: int = 16,
                 router_hidden: int = 16, lambda_depth: float = 0.0, lambda_step: float = 0.0, **kwargs):
        self.base = dict(base or {})
        self.latent_steps = latent_steps
        self.adapter_rank = adapter_rank
        self.router_hidden = router_hidden
        self.lambda_depth = lambda_depth
        self.lambda_step = lambda_step
        super().__init__(**kwargs)

    def base_config(self):
        base = dict(self.base)
        return AutoConfig.for_model(base.pop("model_type"), **base)


def _rms(h):
    """Parameter-free RMS normalisation: routers and adapters see the residual stream's direction,
    whatever its size at that depth."""
    return h * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(h.dtype)


class Router(nn.Module):
    """R(h) = sigmoid(W2 gelu(W1 rms(h)) + b), started at w ~ 0.12 (b = -2, W2 = 0): the full path, mostly."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, 1)
        nn.init.zeros_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, -2.0)

    def forward(self, h, bias=0.0):
        return torch.sigmoid(self.fc2(F.gelu(self.fc1(_rms(h)))) + bias)[..., 0]


class Adapter(nn.Module):
    """g(h) = h + U silu(D rms(h)): a rank-r residual step, started as the identity (U = 0), i.e. as
    a skipped layer."""

    def __init__(self, width: int, rank: int):
        super().__init__()
        self.down, self.up = nn.Linear(width, rank), nn.Linear(rank, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return h + self.up(F.silu(self.down(_rms(h))))


class LatentProjection(nn.Module):
    """The last hidden state -> the next latent step's input embedding (CODI's projection: Linear,
    GELU, Linear, LayerNorm; Shen et al. 2025, arXiv:2502.21074)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2, self.norm = nn.Linear(width, width), nn.Linear(width, width), nn.LayerNorm(width)

    def forward(self, h):
        return self.norm(self.fc2(F.gelu(self.fc1(h))))


class Meter:
    """What generation actually computed, summed over `generate` calls until `reset`. A batch runs
    a layer for all its rows when any needs it: `layers_run` counts that (rows one by one),
    `layers_chosen` what the routers chose."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.positions = 0        # generated positions through the stack (latent steps run, answer tokens fed) x rows
        self.layers_run = 0       # decoder-layer runs over those positions
        self.layers_chosen = 0    # full-path decisions of the routers
        self.steps = 0            # latent steps asked for (rows x latent_steps)
        self.steps_skipped = 0
        self.prompts = 0
        self.seconds = 0.0

    def summary(self, n_layers: int) -> dict:
        pos = max(self.positions, 1)
        return {"layers_per_token": self.layers_run / pos, "layers_chosen_per_token": self.layers_chosen / pos,
                "layers_total": n_layers, "latent_steps": self.steps / max(self.prompts, 1),
                "steps_skipped": self.steps_skipped / max(self.prompts, 1),
                "steps_skipped_share": self.steps_skipped / max(self.steps, 1),
                "positions_per_prompt": self.positions / max(self.prompts, 1),
                "generate_s": round(self.seconds, 3)}


class System15ForCausalLM(PreTrainedModel):
    config_class = System15Config
    base_model_prefix = "s15"

    def __init__(self, config: System15Config):
        super().__init__(config)
        base_cfg = config.base_config()
        if base_cfg.model_type not in SUPPORTED:
            raise ModelError(f"System-1.5 needs a Llama-family decoder ({', '.join(SUPPORTED)}); "
                             f"got {base_cfg.model_type}")
        self.base = AutoModelForCausalLM.from_config(base_cfg)
        width, n = base_cfg.hidden_size, base_cfg.num_hidden_layers
        self.routers = nn.ModuleList(Router(width, config.router_hidden) for _ in range(n))
        self.adapters = nn.ModuleList(Adapter(width, config.adapter_rank) for _ in range(n))
        self.step_router = Router(width, config.router_hidden)
        self.step_bias = nn.Parameter(torch.zeros(max(1, config.latent_steps)))
        self.latent = LatentProjection(width)
        self.meter = Meter()
        if getattr(base_cfg, "tie_word_embeddings", False):
            self._tied_weights_keys = {"base.lm_head.weight": "base.model.embed_tokens.weight"}
        self.post_init()

    # ------------------------------------------------------------------ building and saving
    @classmethod
    def wrap(cls, base, *, latent_steps: int = 6, adapter_rank: int = 16, router_hidden: int = 16,
             lambda_depth: float = 0.0, lambda_step: float = 0.0, seed: int = 0) -> System15ForCausalLM:
        """A System-1.5 student around `base` (its weights copied), the shortcut modules initialised
        from `seed` (the global random stream forked: the run's is left as it is)."""
        check_base(base)
        cfg = System15Config(base=base.config.to_dict(), latent_steps=latent_steps, adapter_rank=adapter_rank,
                             router_hidden=router_hidden, lambda_depth=lambda_depth, lambda_step=lambda_step)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(cfg)
        model.base.load_state_dict(base.state_dict())
        model.base.generation_config = base.generation_config
        return model.to(next(base.parameters()).dtype)

    def _init_weights(self, module):
        pass  # the shortcut modules initialise themselves; the base's weights are copied or loaded

    @property
    def generation_config(self):
        return self.base.generation_config

    @generation_config.setter
    def generation_config(self, value):
        if "base" in self._modules:
            self.base.generation_config = value

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    def can_generate(self) -> bool:
        return True

    def set_thresholds(self, lambda_depth: float | None = None, lambda_step: float | None = None) -> None:
        for name, v in (("lambda_depth", lambda_depth), ("lambda_step", lambda_step)):
            if v is not None:
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"{name}={v}: expected a number in [0, 1] (0: full path, 1: every shortcut)")
                setattr(self.config, name, float(v))

    def shortcut_parameters(self):
        """The parameters stage 2 trains: routers, adapters, the step router and its biases."""
        for m in (self.routers, self.adapters, self.step_router):
            yield from m.parameters()
        yield self.step_bias

    def compute_used(self) -> dict:
        """What the `generate` calls since the last `reset_compute` computed (`Meter.summary`)."""
        return self.meter.summary(self.n_layers)

    def reset_compute(self) -> None:
        self.meter.reset()

    # ------------------------------------------------------------------ the layer stack
    @property
    def n_layers(self) -> int:
        return len(self.base.model.layers)

    def run_layers(self, embeds, mask2d, position_ids, cache, route=None, lam: float = 0.0, meter=None):
        """The decoder stack over `embeds` (B, T, D) at `position_ids` (B, T), reading and extending
        `cache`; `mask2d` (B, cached + T): 1 where a position may be attended to. `route`: None (the
        full path), "soft" (the training mixture) or "hard" (thresholded at `lam`).
        Returns (final normed states (B, T, D), [each layer's output (B, T, D)], [router weights
        (B, T) per layer] (soft and hard routes))."""
        base = self.base.model
        causal = create_causal_mask(config=self.base.config, inputs_embeds=embeds, attention_mask=mask2d,
                                    cache=cache, position_ids=position_ids)
        pe = base.rotary_emb(embeds, position_ids=position_ids)
        h, states, weights = embeds, [], []
        kw = {"attention_mask": causal, "position_embeddings": pe, "position_ids": position_ids, "cache": cache,
                  "use_cache": cache is not None}
        rows = embeds.shape[0] * embeds.shape[1]
        for i, layer in enumerate(base.layers):
            if route is None:
                h = layer(h, **kw)
                if meter is not None:
                    meter.layers_run += rows
                    meter.layers_chosen += rows
            elif route == "soft":
                w = self.routers[i](h)
                weights.append(w)
                h = w[..., None] * self.adapters[i](h) + (1 - w[..., None]) * layer(h, **kw)
            else:
                w = self.routers[i](h)
                weights.append(w)
                take = shortcut(w, lam)
                if meter is not None:
                    meter.layers_chosen += int((~take).sum())
                if bool(take.all()):
                    self._write_kv(layer, h, pe, cache)
                    h = self.adapters[i](h)
                else:
                    if meter is not None:
                        meter.layers_run += rows  # run for the whole batch: what was computed
                    full = layer(h, **kw)
                    h = torch.where(take[..., None], self.adapters[i](h), full) if bool(take.any()) else full
            states.append(h)
        return base.norm(h), states, weights

    def _write_kv(self, layer, h, pe, cache) -> None:
        """The keys and values a shortcut layer leaves for later positions: its attention's
        projections of its input, as the full layer would have written them."""
        if cache is None:
            return
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        shape = (*x.shape[:-1], -1, attn.head_dim)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        cos, sin = pe
        rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        _, k = rope(k, k, cos, sin)
        cache.update(k, v, attn.layer_idx)

    def logits(self, hidden):
        return self.base.lm_head(hidden)

    # ------------------------------------------------------------------ latent reasoning
    def latent_forward(self, prompt_ids, prompt_mask, answer_ids, answer_mask, route=None):
        """Teacher-forced latent reasoning, for training: read the prompt (left-padded), run
        `latent_steps` latent steps, then the answer tokens (right-padded, EOS included).
        `route`: None (the full path: the stage-1 student, the stage-2 teacher) or "soft".
        Returns a dict: `logits` (B, m, V) predicting answer token t from the position before it;
        `states` (B, k + m, L, D) every layer's output at the generated positions; `latent` (B, k, D)
        the latent steps' outputs h_j (after the step mixture); `mask` (B, k + m) the generated
        positions that count; with the soft route `w` (B, k + m, L) and `s` (B, k), the routers' weights."""
        k = self.config.latent_steps
        cache = DynamicCache(config=self.base.config)
        embed = self.base.get_input_embeddings()
        pos = (prompt_mask.long().cumsum(-1) - 1).clamp_min(0)
        n_prompt = prompt_mask.long().sum(-1, keepdim=True)
        hidden, _, _ = self.run_layers(embed(prompt_ids), prompt_mask, pos, cache)
        prev = hidden[:, -1]
        mask2d = prompt_mask
        ones = torch.ones_like(prompt_mask[:, :1])
        states, latents, ws, ss = [], [], [], []
        for j in range(k):
            mask2d = torch.cat([mask2d, ones], 1)
            out, st, w = self.run_layers(self.latent(prev)[:, None], mask2d, n_prompt + j, cache, route)
            new = out[:, 0]
            if route == "soft":
                s = self.step_router(prev, self.step_bias[j])
                ss.append(s)
                new = s[:, None] * prev + (1 - s[:, None]) * new
                ws.append(torch.stack(w, -1))
            states.append(torch.stack(st, 2))
            latents.append(new)
            prev = new
        m = answer_ids.shape[1]
        mask2d = torch.cat([mask2d, answer_mask], 1)
        apos = n_prompt + k + torch.arange(m, device=answer_ids.device)[None]
        out, st, w = self.run_layers(embed(answer_ids), mask2d, apos, cache, route)
        logits = self.logits(torch.cat([prev[:, None], out[:, :-1]], 1))
        states.append(torch.stack(st, 2))
        if route == "soft":
            ws.append(torch.stack(w, -1))
        B = prompt_ids.shape[0]
        result = {"logits": logits, "states": torch.cat(states, 1),
                  "latent": torch.stack(latents, 1) if latents else prev.new_zeros(B, 0, prev.shape[-1]),
                  "mask": torch.cat([ones.expand(B, k).bool(), answer_mask.bool()], 1)}
        if route == "soft":
            result["w"] = torch.cat(ws, 1)
            result["s"] = torch.stack(ss, 1) if ss else prev.new_zeros(B, 0)
        return result

    def token_forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False,
                      lam: float | None = None):
        """A teacher-forced forward through this stack: every position on the full path (the stage-1
        teacher reading the written-out CoT), or thresholded at `lam` when given. Returns logits
        (B, T, V) and, when asked, every layer's output (B, T, L, D)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        route = None if lam is None else "hard"
        hidden, states, _ = self.run_layers(self.base.get_input_embeddings()(input_ids), attention_mask, pos, None,
                                            route, lam or 0.0)
        return self.logits(hidden), (torch.stack(states, 2) if output_hidden_states else None)

    def forward(self, input_ids=None, attention_mask=None, *, system15: dict | None = None, **kwargs):
        """Training calls go through here (so data-parallel wrappers see them): `system15=` the
        arguments of `latent_forward` returns its dict, `system15={"tokens": (ids, mask)}` the CoT
        pass (`token_forward` with every layer's output); otherwise the base model's own forward
        (token mode, full path: scoring, fidelity)."""
        if system15 is not None and "tokens" in system15:
            return self.token_forward(*system15["tokens"], output_hidden_states=True)
        if system15 is not None:
            return self.latent_forward(**system15)
        return self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, *, max_new_tokens: int = 64, do_sample: bool = False,
                 temperature=None, top_p=None, eos_token_id=None, pad_token_id=None, stop_strings=None,
                 tokenizer=None, logits_processor=None, **_):
        """Latent reasoning then the answer, thresholded at the config's `lambda_depth` and
        `lambda_step`: the prompt (left-padded) on the full path, `latent_steps` latent steps (each
        run or skipped), then answer tokens, greedy or sampled (temperature, top-p), until EOS, a
        stop string or `max_new_tokens`. Returns the prompt ids followed by the answer's, padded
        with `pad_token_id` (as transformers' `generate`); what was computed is added to `meter`."""
        if logits_processor is not None:
            raise ValueError("the System-1.5 student takes no logits processors")
        t0 = time.perf_counter()
        meter, cfg = self.meter, self.config
        B = input_ids.shape[0]
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        eos = eos_token_id if eos_token_id is not None else self.generation_config.eos_token_id
        eos = torch.tensor(eos if isinstance(eos, list) else [eos], device=input_ids.device)
        pad = pad_token_id if pad_token_id is not None else int(eos[0])
        cache = DynamicCache(config=self.base.config)
        embed = self.base.get_input_embeddings()
        pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
        n_prompt = mask.long().sum(-1, keepdim=True)
        hidden, _, _ = self.run_layers(embed(input_ids), mask, pos, cache)
        prev = hidden[:, -1]
        meter.prompts += B
        for j in range(cfg.latent_steps):
            meter.steps += B
            skip = shortcut(self.step_router(prev, self.step_bias[j]), cfg.lambda_step)
            meter.steps_skipped += int(skip.sum())
            if bool(skip.all()):
                continue
            mask = torch.cat([mask, (~skip).long()[:, None]], 1)
            meter.positions += B
            out, _, _ = self.run_layers(self.latent(prev)[:, None], mask, n_prompt + j, cache, "hard",
                                        cfg.lambda_depth, meter)
            prev = torch.where(skip[:, None], prev, out[:, 0])
        logits = self.logits(prev)
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        new = []
        gen = torch.Generator(device=input_ids.device).manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
        for t in range(max_new_tokens):
            tok = _pick(logits.float(), do_sample, temperature, top_p, gen)
            tok = torch.where(done, torch.full_like(tok, pad), tok)
            new.append(tok)
            done = done | torch.isin(tok, eos)
            if stop_strings and tokenizer is not None:
                ids = torch.stack(new, 1).tolist()
                for r in range(B):
                    if not done[r] and any(tokenizer.decode(ids[r], skip_special_tokens=True).endswith(s)
                                           for s in stop_strings):
                        done[r] = True
            if bool(done.all()) or t == max_new_tokens - 1:
                break
            # rows that have finished ride along in the batch (and are counted: they are computed)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            meter.positions += B
            out, _, _ = self.run_layers(embed(tok)[:, None], mask, n_prompt + cfg.latent_steps + t, cache, "hard",
                                        cfg.lambda_depth, meter)
            logits = self.logits(out[:, 0])
        meter.seconds += time.perf_counter() - t0
        return torch.cat([input_ids, torch.stack(new, 1)], 1)


def _pick(logits, do_sample, temperature, top_p, gen):
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / (temperature or 1.0), -1)
    if top_p is not None and top_p < 1.0:
        sorted_p, idx = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p.masked_fill(drop, 0.0))
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


def shortcut(w, lam: float):
    """Where a router weight `w` takes the shortcut at threshold `lam`: w > 1 - lam (0: never, 1: always)."""
    if lam <= 0:
        return torch.zeros_like(w, dtype=torch.bool)
    if lam >= 1:
        return torch.ones_like(w, dtype=torch.bool)
    return w > 1 - lam


def check_base(model) -> None:
    """Refuse, naming what is wrong, a base this student cannot be built on."""
    mtype = getattr(model.config, "model_type", None)
    if mtype not in SUPPORTED:
        raise ModelError(f"method=system15 builds on a Llama-family decoder ({', '.join(SUPPORTED)}); the student is "
                         f"{type(model).__name__} (model_type {mtype})")
    if any(t != "full_attention" for t in (getattr(model.config, "layer_types", None) or [])):
        raise ModelError("method=system15: the student uses sliding-window layers; only full attention is supported")


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM load `retort-system15` directories (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, System15Config)
        AutoModelForCausalLM.register(System15Config, System15ForCausalLM)
    except ValueError:
        pass  # already registered


__all__ = ["Meter", "System15Config", "System15ForCausalLM", "check_base", "register", "shortcut"]

"""Teacher-trace throughput: what `retort traces` does per shard (sample N completions per prompt,
then the teacher's log-prob of every sampled token and its top-k), several ways, in one process on
the same prompts, against the machine's limit:

- `hf+score`: transformers' `generate` (what a hand-written script uses), then one teacher-forced
  forward for the log-probs and top-k (`retort.lm.rollout.score`);
- `hf`: transformers' `generate` alone, nothing scored (the floor a user's own sampler pays);
- `fast+score`: retort's fast engine, then the same scoring forward (retort before the log-probs
  were kept while sampling);
- `fast`: retort's fast engine keeping the log-probs and top-k of the logits it samples from (what
  `retort traces` does for Llama-family teachers);
- `limit` (always, not an arm): measured fp32 matmul throughput (the model's decode shapes and a
  large square) and memory bandwidth (a large sum and copy), the forward's FLOPs and bytes per
  decode step (2 x matmul params x batch + attention over the KV cache; weights + KV cache read),
  and from them the tokens/s no implementation could beat on this machine: per decode step
  (batch / max(flops / peak, bytes / bandwidth), the issue's definition) and for the whole
  workload (each distinct prompt prefilled once at peak FLOP/s, plus every decode step). Each arm
  is reported as a fraction of both.

The arms sample the same prompts with the same settings and dtype (float32, one model object;
different random streams: generate's and the fast engine's samplers draw differently, so token
counts differ slightly and are reported; throughput is per sampled token, prefill included). Each
round runs every arm once, the order rotated by one per round, so machine noise hits all alike;
per arm: mean +- standard error over rounds of tokens/s (and the median, the field older results
have).

    python benchmarks/traces.py [--teacher builtin] [--prompts 500] [--n 4] [--topk 8] [--rounds 3] \
        [--threads 2] [--out benchmarks/results/traces.json]
    python benchmarks/traces.py --teacher smollm2-135m-instruct qwen2.5-coder-0.5b-instruct \
        [--prompts 64 --n 4 --max-new-tokens 32 --temperature 0.7 --batch 64 --rounds 3] \
        [--out benchmarks/results/traces_real.json]

`--teacher builtin` (the default) is `retort teacher`'s built-in one (trained and cached on first
use) on its own task, with the defaults above the first command, and writes the format of the
existing results (traces.json). Any other teacher is a model name `retort` loads (the packaged
SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct, a .gguf, a directory, `preset:NAME`), its
prompts reasoning-gym's basic_arithmetic (`--task`) through its chat template, built by retort's
own `encode_prompt` as `retort traces` builds them, with the issue's defaults (64 prompts x 4
samples x 32 new tokens at T=0.7, 64 sequences per batch as `retort traces` batches them); one
JSON holds every teacher of the run (`teachers.NAME`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("hf+score", "hf", "fast+score", "fast")
# the built-in teacher's run and the real models' (the issue's settings)
DEFAULTS = {"builtin": {"prompts": 500, "temperature": 1.0, "max_new_tokens": 96, "batch": 500,
                        "arms": ["hf+score", "fast+score", "fast", "hf"]},
            "real": {"prompts": 64, "temperature": 0.7, "max_new_tokens": 32, "batch": 64,
                     "arms": ["hf+score", "hf", "fast"]}}


def order(arms: list[str], r: int) -> list[str]:
    """Round r's order: the arms rotated by r, so each goes first as often as the others."""
    k = r % len(arms)
    return arms[k:] + arms[:k]


def mean_sem(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0)


def forward_cost(shape: dict, batch: int, context: float) -> tuple[float, float]:
    """(FLOPs, bytes) of one decode step of `batch` rows with `context` cached positions each.
    `shape`: matmul_params (every projection and the LM head: each is read once and costs 2
    FLOPs per weight per row), lm_head_params, layers, heads, kv_heads, head_dim, bytes_per_value. Attention: per
    layer and row, q.K and p.V over the context, 2 x 2 x heads x head_dim x context FLOPs, and the
    K and V cache read once."""
    attn_flops = shape["layers"] * 4 * shape["heads"] * shape["head_dim"] * context * batch
    flops = 2 * shape["matmul_params"] * batch + attn_flops
    kv_bytes = shape["layers"] * 2 * shape["kv_heads"] * shape["head_dim"] * context * batch
    return flops, (shape["matmul_params"] + kv_bytes) * shape["bytes_per_value"]


def limit_rates(shape: dict, machine: dict, *, batch: int, prompt_len: float, new_tokens: int,
                distinct_prompts: int, rows: int) -> dict:
    """The tokens/s no implementation beats on `machine` ({"gflops": peak GFLOP/s, "gbytes": GB/s}):
    per decode step at the mean context (prompt + half the new tokens), batch / max(compute time,
    memory time); and for the whole workload, `rows` sequences of `new_tokens` sampled in batches
    of `batch` after each of `distinct_prompts` prompts of `prompt_len` tokens is prefilled once
    (compute-bound: 2 x matmul params FLOPs per prompt token, the LM head's at its last token only,
    attention ignored)."""
    peak, bw = machine["gflops"] * 1e9, machine["gbytes"] * 1e9
    context = prompt_len + new_tokens / 2

    def step_time(rows_now: int) -> float:
        flops, nbytes = forward_cost(shape, rows_now, context)
        return max(flops / peak, nbytes / bw)

    flops, nbytes = forward_cost(shape, batch, context)
    full_batches, rest = divmod(rows, batch)
    decode = new_tokens * (full_batches * step_time(batch) + (step_time(rest) if rest else 0.0))
    # the LM head runs at a prompt's last position only
    body = shape["matmul_params"] - shape["lm_head_params"]
    prefill = 2 * (body * prompt_len + shape["lm_head_params"]) * distinct_prompts / peak
    return {"decode_step_flops": flops, "decode_step_bytes": nbytes,
            "decode_step_bound": "compute" if flops / peak >= nbytes / bw else "memory",
            "decode_step_limit_tok_s": batch / step_time(batch),
            "workload_limit_tok_s": rows * new_tokens / (prefill + decode),
            "workload_limit_prefill_share": prefill / (prefill + decode)}


def model_shape(model) -> dict:
    """What `forward_cost` needs, read off a loaded Llama-family model."""
    import torch

    cfg = model.config
    heads = cfg.num_attention_heads
    layers = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    return {"matmul_params": sum(m.weight.numel() for m in layers) + model.lm_head.weight.numel(),
            "lm_head_params": model.lm_head.weight.numel(), "layers": cfg.num_hidden_layers, "heads": heads,
            "kv_heads": getattr(cfg, "num_key_value_heads", heads) or heads,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            "bytes_per_value": next(model.parameters()).element_size(),
            "params": sum(p.numel() for p in model.parameters())}


def measure_machine(model, batch: int, *, seconds: float = 0.5) -> dict:
    """Measured fp32 matmul GFLOP/s (each distinct weight shape of the model at `batch` rows, and a
    2048^3 square) and memory GB/s (sum of a 512 MiB tensor: bytes read; copy: read + written)."""
    import torch
    import torch.nn.functional as F

    def rate(fn, work):
        fn()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
            fn()
            n += 1
        return work * n / (time.perf_counter() - t0) / 1e9

    dtype = next(model.parameters()).dtype
    shapes = sorted({tuple(m.weight.shape) for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)}
                    | {tuple(model.lm_head.weight.shape)})
    decode = {}
    for out_f, in_f in shapes:
        w, x = torch.randn(out_f, in_f, dtype=dtype), torch.randn(batch, in_f, dtype=dtype)
        decode[f"{batch}x{in_f}x{out_f}"] = rate(lambda x=x, w=w: F.linear(x, w), 2 * batch * in_f * out_f)
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    square = rate(lambda: a @ b, 2 * 2048 ** 3)
    big = torch.ones(128 * 2 ** 20, dtype=torch.float32)  # 512 MiB: far past any cache
    dst = torch.empty_like(big)
    read = rate(lambda: big.sum(), big.numel() * 4)
    copy = rate(lambda: dst.copy_(big), 2 * big.numel() * 4)
    return {"matmul_gflops_decode_shapes": decode, "matmul_gflops_square_2048": square,
            "gflops": max(square, *decode.values()), "read_gbytes": read, "copy_gbytes": copy,
            "gbytes": max(read, copy)}


def bench_teacher(name: str, a, log=print) -> dict:
    import torch

    from retort.lm.config import ModelConfig, TaskConfig
    from retort.lm.data.collate import encode_prompt
    from retort.lm.models import load_model
    from retort.lm.rollout.generate import generate_ids
    from retort.lm.rollout.score import score
    from retort.lm.tasks import get_task

    if name == "builtin":
        from retort.lm.teacher import ensure_teacher

        model, tok = load_model(ModelConfig(name=str(ensure_teacher())))
        task = TaskConfig()
    else:
        model, tok = load_model(ModelConfig(name=name, dtype="float32"))
        task = TaskConfig(name=a.task)
    model.eval()
    prompts = [encode_prompt(tok, e.prompt) for e in get_task(task).examples("train", a.prompts, 0)]
    eos = [tok.eos_token_id] if a.topk and tok.eos_token_id is not None else []
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def run(way: str, seed: int) -> tuple[float, int]:
        t = time.perf_counter()
        engine = "hf" if way.startswith("hf") else "fast"
        outs = generate_ids(model, tok, prompts, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                            num_samples=a.n, batch_size=a.batch, seed=seed, engine=engine,
                            scores=a.topk if way == "fast" else None)
        flat = [(p, c) for p, o in zip(prompts, outs) for c in o]
        if way.endswith("+score"):
            score(model, [p for p, _ in flat], [c.token_ids + (eos if c.finish_reason == "stop" else []) for _, c in flat],
                  topk=a.topk, batch_size=a.batch, pad_id=pad)
        elif way == "fast":
            assert all(c.scores is not None for _, c in flat)
        return time.perf_counter() - t, sum(len(c.token_ids) for _, c in flat)

    arms = list(a.arms)
    times: dict[str, list[float]] = {w: [] for w in arms}
    tokens: dict[str, list[int]] = {w: [] for w in arms}
    for r in range(a.rounds):
        for w in order(arms, r):
            dt, n = run(w, seed=r)
            times[w].append(dt)
            tokens[w].append(n)
            log(f"{name} round {r} {w:11s} {dt:7.2f} s  {n} tokens  {n / dt:8.1f} tok/s")
    rates = {w: [n / t for n, t in zip(tokens[w], times[w])] for w in arms}
    stats = {w: mean_sem(rates[w]) for w in arms}
    shape = model_shape(model)
    machine = measure_machine(model, a.batch)
    rows = len(prompts) * a.n
    limit = limit_rates(shape, machine, batch=min(a.batch, rows), prompt_len=statistics.fmean(map(len, prompts)),
                        new_tokens=a.max_new_tokens, distinct_prompts=len(prompts), rows=rows)
    result = {"teacher": name, "prompts": len(prompts), "samples": rows,
              "prompt_tokens_mean": statistics.fmean(map(len, prompts)), "torch_threads": torch.get_num_threads(),
              "tokens_per_s_median": {w: statistics.median(rates[w]) for w in arms},
              "tokens_per_s_mean": {w: stats[w][0] for w in arms},
              "tokens_per_s_sem": {w: stats[w][1] for w in arms},
              "seconds": times, "tokens": tokens, "tokens_mean": {w: statistics.fmean(tokens[w]) for w in arms},
              "model": shape, "machine": machine, "limit": limit,
              "fraction_of_decode_step_limit": {w: stats[w][0] / limit["decode_step_limit_tok_s"] for w in arms},
              "fraction_of_workload_limit": {w: stats[w][0] / limit["workload_limit_tok_s"] for w in arms}}
    mean = result["tokens_per_s_mean"]
    for other in ("hf+score", "hf", "fast+score"):
        if "fast" in arms and other in arms:
            key = other.replace("+", "_")
            # the ratio of means, and its standard error by the delta method (independent arms)
            ratio = mean["fast"] / mean[other]
            rel = ((stats["fast"][1] / mean["fast"]) ** 2 + (stats[other][1] / mean[other]) ** 2) ** 0.5
            result[f"speedup_fast_vs_{key}_mean"] = ratio
            result[f"speedup_fast_vs_{key}_sem"] = ratio * rel
            # the older field: ratio of medians
            result[f"speedup_fast_vs_{key}"] = result["tokens_per_s_median"]["fast"] / result["tokens_per_s_median"][other]
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", nargs="+", default=["builtin"],
                    help="builtin, or model names retort loads (smollm2-135m-instruct qwen2.5-coder-0.5b-instruct)")
    ap.add_argument("--task", default="rg:basic_arithmetic", help="the prompts' task for a teacher other than builtin")
    ap.add_argument("--prompts", type=int, default=None, help="builtin: 500; others: 64")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=None, help="builtin: 1.0; others: 0.7")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="builtin: 96; others: 32")
    ap.add_argument("--batch", type=int, default=None, help="sequences per batch; builtin: 500; others: 64")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=None,
                    help="builtin: hf+score fast+score fast hf; others: hf+score hf fast")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="builtin: benchmarks/results/traces.json; others: traces_real.json")
    a = ap.parse_args(argv)
    kind = "builtin" if a.teacher == ["builtin"] else "real"
    if kind == "real" and "builtin" in a.teacher:
        ap.error("--teacher builtin runs alone (its own task and settings)")
    for k, v in DEFAULTS[kind].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.out is None:
        a.out = str(ROOT / "benchmarks" / "results" / ("traces.json" if kind == "builtin" else "traces_real.json"))

    import torch

    from retort.cli import _quiet_libraries

    _quiet_libraries()
    torch.set_num_threads(a.threads)
    head = {"command": " ".join(["python", "benchmarks/traces.py", *(sys.argv[1:] if argv is None else argv)]),
            "args": vars(a)}
    log = lambda s: print(s, flush=True)
    if kind == "builtin":
        result = {**head, **bench_teacher("builtin", a, log)}
    else:
        result = {**head, "teachers": {name: bench_teacher(name, a, log) for name in a.teacher}}
    brief = {k: v for k, v in result.items() if k not in ("seconds", "tokens", "args", "teachers", "machine")}
    for name, r in result.get("teachers", {}).items():
        brief[name] = {k: v for k, v in r.items() if k not in ("seconds", "tokens", "machine")}
    print(json.dumps(brief, indent=1))
    from _results import write_json

    write_json(Path(a.out), result)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

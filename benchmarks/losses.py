"""Token-level distillation loss: time and extra peak memory of forward + backward, three ways, in
one run: plain full-vocabulary code (TRL's `generalized_jsd_loss` style), Liger-Kernel's chunked
`LigerFusedLinearJSDLoss` (pure-PyTorch path, compiled=False), and retort's fused path
(`retort.losses.fused`). Teacher given as hidden states + lm_head for all three. Each measurement
runs in a fresh subprocess so that peak RSS is its own (VmHWM, reset once the inputs exist).

    pip install --no-deps liger-kernel       # its chunked losses need no triton on CPU
    python benchmarks/losses.py [--n 2048] [--hidden 576] [--vocab 49152 151936] [--reps 3] \
        [--out benchmarks/results/losses.json]

Each repetition measures its own matmul floor (4 matmuls of (N x H) @ (H x V): student logits,
d hidden, d weight, teacher logits) and then every (V, divergence, implementation) once, the
implementations' order alternating between measurements and repetitions. `ratios` gives, per (V,
divergence), retort's time over its repetition's floor and its extra peak memory over plain's in the
same repetition, as mean and standard error over the repetitions. `--profile` adds one profiled run of
retort's path per (V, divergence) (torch.profiler, not timed with the others): seconds in the
matmuls (aten::mm, aten::addmm_) and in everything else, which is what the time above the floor is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_json

ROOT = Path(__file__).resolve().parent.parent


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: VmHWM, by writing 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """Peak RSS in bytes since the last `_reset_peak`: VmHWM. Not `ru_maxrss`, which on Linux keeps
    the high-water mark of the process image before `exec` (the parent's RSS at the fork), so a
    child whose own peak stays under its parent's reported the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(impl: str, div: str, n: int, h: int, v: int, threads: int) -> dict:
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

    reset = _reset_peak()  # the inputs' construction (randn temporaries) is not the loss's peak
    base = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    loss = run()
    loss.backward()
    elapsed = time.perf_counter() - t0
    peak = _peak_rss()
    return {"impl": impl, "divergence": div, "vocab": v, "seconds": elapsed, "extra_peak_bytes": max(0, peak - base),
            "peak_reset": reset, "loss": float(loss.detach())}


def profile_child(div: str, n: int, h: int, v: int, threads: int) -> dict:
    """retort's fused forward + backward under torch.profiler: self seconds of the matmuls against the rest."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(ROOT / "src"))
    from retort.losses.fused import fused_linear_divergence

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hs, w = (torch.randn(n, h) * 0.5).requires_grad_(), (torch.randn(v, h) * 0.05).requires_grad_()
    ht, wt, labels = torch.randn(n, h) * 0.5, torch.randn(v, h) * 0.05, torch.randint(0, v, (n,))
    name, beta = ("forward_kl", 0.0) if div == "forward_kl" else ("jsd", 0.5)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = fused_linear_divergence(hs, w, labels, teacher_hidden=ht, teacher_weight=wt, divergence=name,
                                       beta=beta)[0] / n
        loss.backward()
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    matmul = sum(t for k, t in ops.items() if k in ("aten::mm", "aten::addmm_", "aten::addmm"))
    top = sorted(((k, t) for k, t in ops.items() if k not in ("aten::mm", "aten::addmm_", "aten::addmm")),
                 key=lambda kv: -kv[1])[:8]
    return {"divergence": div, "vocab": v, "matmul_seconds": matmul, "other_seconds": sum(ops.values()) - matmul,
            "top_other_ops": dict(top)}


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


def _mean_se(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, (var / len(xs)) ** 0.5


def _run(args, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), *argv]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 151936])
    ap.add_argument("--impls", nargs="+", default=["plain", "liger", "retort"])
    ap.add_argument("--divergences", nargs="+", default=["jsd", "forward_kl"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="add one profiled run of retort's path per (V, divergence)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "losses.json"))
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--profile-child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--summarise-only", action="store_true", help="recompute the ratios of --out; run nothing")
    args = ap.parse_args()
    if args.summarise_only:
        done = json.loads(Path(args.out).read_text())
        done["ratios"] = ratios(done["results"])
        write_json(Path(args.out), done)
        return
    if args.child:
        impl, div, n, h, v = args.child
        print(json.dumps(child(impl, div, int(n), int(h), int(v), args.threads)))
        return
    if args.profile_child:
        div, n, h, v = args.profile_child
        print(json.dumps(profile_child(div, int(n), int(h), int(v), args.threads)))
        return
    results, k = [], 0
    for rep in range(args.reps):
        for v in args.vocab:
            mm = matmul_seconds(args.n, args.hidden, v, args.threads)
            floor = 4 * mm  # student logits, d hidden, d weight, teacher logits
            flops = 2 * args.n * args.hidden * v
            print(f"rep {rep} V={v}: one (N x H) @ (H x V) matmul {mm:.2f}s = {flops / mm / 1e9:.0f} GFLOP/s; "
                  f"floor (4 matmuls) {floor:.2f}s", flush=True)
            for div in args.divergences:
                # each measurement once per repetition; the implementations' order alternates
                for impl in args.impls if k % 2 == 0 else args.impls[::-1]:
                    try:
                        r = _run(args, ["--child", impl, div, str(args.n), str(args.hidden), str(v)])
                    except RuntimeError as e:
                        print(f"  {impl} {div}: failed: {e}", flush=True)
                        continue
                    r.update(rep=rep, floor_seconds=floor, matmul_gflops=flops / mm / 1e9, n=args.n, hidden=args.hidden)
                    results.append(r)
                    print(f"  {div:10s} {impl:7s} {r['seconds']:6.2f}s ({r['seconds'] / floor:4.2f}x floor)  "
                          f"+{r['extra_peak_bytes'] / 2**30:5.2f} GiB  loss {r['loss']:.6f}", flush=True)
                k += 1
    out = {"command": " ".join(["python", "benchmarks/losses.py", *sys.argv[1:]]), "threads": args.threads,
           "results": results, "ratios": ratios(results)}
    if args.profile:
        out["profile"] = [_run(args, ["--profile-child", div, str(args.n), str(args.hidden), str(v)])
                          for v in args.vocab for div in args.divergences]
        for p in out["profile"]:
            print(f"  profile V={p['vocab']} {p['divergence']}: matmuls {p['matmul_seconds']:.2f}s, "
                  f"the rest {p['other_seconds']:.2f}s", flush=True)
    write_json(Path(args.out), out)


def ratios(results: list[dict]) -> list[dict]:
    """Per (V, divergence): retort's time over its repetition's floor and its extra peak memory over
    plain's in the same repetition (mean and standard error over the repetitions), and each
    implementation's mean seconds and extra peak GiB, as BENCHMARKS.md prints them."""
    out = []
    keys = sorted({(r["vocab"], r["divergence"]) for r in results}, key=lambda kv: (kv[0], kv[1] != "jsd"))
    for v, div in keys:
        rows = [r for r in results if r["vocab"] == v and r["divergence"] == div]
        row = {"vocab": v, "divergence": div}
        for impl in ("plain", "liger", "retort"):
            mine = [r for r in rows if r["impl"] == impl]
            if mine:
                row[f"{impl}_seconds"] = _mean_se([r["seconds"] for r in mine])[0]
                row[f"{impl}_extra_gib"] = _mean_se([r["extra_peak_bytes"] / 2**30 for r in mine])[0]
        over, mem = [], []
        for r in rows:
            if r["impl"] != "retort":
                continue
            over.append(r["seconds"] / r["floor_seconds"])
            plain = next((p for p in rows if p["impl"] == "plain" and p.get("rep") == r.get("rep")), None)
            if plain:
                mem.append(r["extra_peak_bytes"] / plain["extra_peak_bytes"])
        if over:
            row["retort_over_floor"], row["retort_over_floor_se"] = _mean_se(over)
            row["retort_over_floor_per_rep"] = over
        if mem:
            row["retort_mem_over_plain"], row["retort_mem_over_plain_se"] = _mean_se(mem)
            row["retort_mem_over_plain_per_rep"] = mem
        row["floor_seconds"] = _mean_se([r["floor_seconds"] for r in rows if r["impl"] == "retort"] or [0.0])[0]
        out.append(row)
    return out


if __name__ == "__main__":
    main()

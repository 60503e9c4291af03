"""The memory of a real distillation run (issue 29 item 6): the peak RSS of `retort train method=kd`
with a teacher online, against what the run cannot do without, the model sum:

    model sum = teacher weights + student weights + the student's gradients
                + AdamW's state (exp_avg and exp_avg_sq: 2 fp32 tensors per trainable parameter)

Target: peak RSS <= 1.5x the model sum.

    python benchmarks/real_memory.py [--size real|tiny] [--cases xtok,xtok_ckpt,same] [--steps 4] [--batch 8] \
        [--max-len 192] [--work /tmp/retort-real-memory] [--out benchmarks/results/real_memory.json]

Cases (`--size real`: the packaged models, `retort models`; `--size tiny`: built-in presets, a test):
- `xtok`: the packaged Qwen2.5-Coder-0.5B-Instruct teacher (151,936-token vocabulary) online, the
  SmolLM2-135M-Instruct student (49,152 tokens) fully fine-tuned, across tokenizers
  (`method_args.cross_tokenizer=hybrid`, GOLD's hybrid, plus half the CE: configs/kd_xtok_qwen_smollm2.yaml),
  on the worked solutions of reasoning-gym's `chain_sum` (2 to 6 terms; `basic_arithmetic`, the task of
  `retort demo --real`, has no worked solutions: its student learns the teacher's traces);
- `xtok_ckpt`: `xtok` with `student.grad_checkpointing=true` (the student's layers recompute their
  activations in the backward instead of keeping them);
- `same`: SmolLM2-135M-Instruct teaching a 10-layer pruned copy of itself (`student.keep_layers=10`),
  one tokenizer, the fused path (`retort.losses.fused`).
Both models are loaded as retort loads them: the GGUF files de-quantised by transformers to
`teacher.dtype` / `student.dtype`, float32 by default (the weights' bytes below are those of the
loaded fp32 tensors, not of the 4-bit files). Each step is `--batch` sequences of at most
`--max-len` student tokens; the run saves a checkpoint halfway, evaluates at the end (`eval.n=8`,
16 new tokens, with fidelity to the teacher: the default) and exports the student, as a user's run does.

Four steps by default: the peak comes by the second or third (AdamW's state is made at the first; the
batches' lengths differ), and one step of the real `xtok` case takes 1-2 minutes on 2 shared cores.

Per case, two child processes, one after the other (the first once per pair of models):
1. the probe: imports what `retort train` imports (python + torch + transformers + retort's training
   modules) and records its RSS then (`baseline_rss`), then loads both models through retort's own
   loaders and counts their parameters (unique tensors: tied embeddings once) and bytes by dtype,
   and the student's trainable parameters (the model sum above);
2. the run: `python -m retort train ...` (the command is recorded), whose peak RSS is its `ru_maxrss`
   (`os.wait4`); its RSS is also sampled from /proc every 0.2 s beside its output lines, so the
   JSON shows when the peak came (`timeline`: one sample a second, and the output line last printed
   before the peak).
The ratio is given both ways: peak / model sum, and (peak - baseline) / model sum.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.5

# reasoning-gym's chain sums of 2 to 6 terms, with retort's worked solutions (one line a step, then
# <answer>N</answer>: 17 to ~50 SmolLM2 tokens) under reasoning-gym's system prompt (~125 prompt tokens)
RG_TASK = ["task.name=rg:chain_sum", "task.difficulty.min_terms=2", "task.difficulty.max_terms=6"]
KD = ["method=kd", "method_args.teacher=online"]
CASES = {
    "real": {
        "xtok": {"teacher": ["teacher.name=qwen2.5-coder-0.5b-instruct"],
                 "student": ["student.name=smollm2-135m-instruct"],
                 "method": [*KD, "method_args.cross_tokenizer=hybrid", "method_args.ce_weight=0.5"],
                 "task": RG_TASK},
        "xtok_ckpt": {"teacher": ["teacher.name=qwen2.5-coder-0.5b-instruct"],
                      "student": ["student.name=smollm2-135m-instruct", "student.grad_checkpointing=true"],
                      "method": [*KD, "method_args.cross_tokenizer=hybrid", "method_args.ce_weight=0.5"],
                      "task": RG_TASK},
        "same": {"teacher": ["teacher.name=smollm2-135m-instruct"],
                 "student": ["student.name=smollm2-135m-instruct", "student.keep_layers=10",
                             "student.prune_check=0"],
                 "method": [*KD, "method_args.ce_weight=0.5"],
                 "task": RG_TASK},
    },
    "tiny": {
        "xtok": {"teacher": ["teacher.name=preset:teacher"], "student": ["student.name=preset:student"],
                 "method": [*KD, "method_args.cross_tokenizer=hybrid", "method_args.ce_weight=0.5"],
                 "task": ["task.name=modchain"]},
        "xtok_ckpt": {"teacher": ["teacher.name=preset:teacher"],
                      "student": ["student.name=preset:student", "student.grad_checkpointing=true"],
                      "method": [*KD, "method_args.cross_tokenizer=hybrid", "method_args.ce_weight=0.5"],
                      "task": ["task.name=modchain"]},
        "same": {"teacher": ["teacher.name=preset:teacher"], "student": ["student.name=preset:student"],
                 "method": [*KD, "method_args.ce_weight=0.5"], "task": ["task.name=modchain"]},
    },
}


def train_overrides(case: dict, a, out: str) -> list[str]:
    """The `retort train` overrides of one case."""
    return [*case["method"], *case["teacher"], *case["student"], *case["task"], "data.source=solutions",
            f"data.max_len={a.max_len}", f"data.n_train={a.steps * a.batch}", f"train.steps={a.steps}",
            f"train.batch_size={a.batch}", "train.grad_accum=1", "train.lr=5e-5",
            f"train.warmup_steps={max(1, a.steps // 10)}", f"train.save_every={max(1, a.steps // 2)}",
            f"train.log_every={max(1, a.steps // 10)}", "train.eval_every=0", "eval.n=8", "eval.batch_size=8",
            "eval.max_new_tokens=16", f"out={out}"]


# --------------------------------------------------------------------------- the probe child

PROBE = r"""
import json, resource, sys
import torch, transformers  # noqa: F401  (what `retort train` has imported before it loads a model)
import retort.cli, retort.train.loop, retort.lm.track, retort.lm.methods  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
out = {"baseline_rss": rss(), "baseline_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
from retort.config import load_config
from retort.lm.config import TrainRun
from retort.lm.models import load_model
from retort.lm.models.lora import wrap

def count(model):
    seen, params, by_dtype, trainable = set(), 0, {}, 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue  # a tied weight (the embeddings and the lm_head) is one tensor
        seen.add(p.data_ptr())
        params += p.numel()
        by_dtype[str(p.dtype)] = by_dtype.get(str(p.dtype), 0) + p.numel() * p.element_size()
        if p.requires_grad:
            trainable += p.numel()
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    # buffers (rotary tables; packed weights, were a GGUF left quantized) are listed, not in the sum
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return {"params": params, "bytes": sum(by_dtype.values()), "bytes_by_dtype": by_dtype,
            "trainable_params": trainable, "grad_bytes": grad_bytes, "buffer_bytes": buffers}

run = load_config(TrainRun, None, json.loads(sys.argv[1]))
student, _ = load_model(run.student, seed=run.seed, max_len=max(512, run.data.max_len))
if run.student.lora.r:
    student = wrap(student, run.student.lora)
out["student"] = {"name": run.student.name, "dtype": run.student.dtype, "keep_layers": run.student.keep_layers,
                  **count(student)}
del student
teacher, _ = load_model(run.teacher, seed=run.seed)
out["teacher"] = {"name": run.teacher.name, "dtype": run.teacher.dtype, **count(teacher)}
print("PROBE " + json.dumps(out))
"""


def probe(overrides: list[str], env: dict) -> dict:
    """The import baseline and the two models' counts (the probe child above)."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(overrides)], capture_output=True, text=True,
                          env=env, cwd=ROOT, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"real_memory: the probe failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(line[len("PROBE "):])


def model_sum(p: dict) -> dict:
    """The model sum (module docstring) from the probe's counts."""
    adam = 2 * 4 * p["student"]["trainable_params"]  # exp_avg + exp_avg_sq, fp32
    parts = {"teacher_weights": p["teacher"]["bytes"], "student_weights": p["student"]["bytes"],
             "student_grads": p["student"]["grad_bytes"], "adamw_state": adam}
    return {**parts, "total": sum(parts.values())}


# --------------------------------------------------------------------------- the run child


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measured_run(argv: list[str], env: dict, every: float = 0.2) -> dict:
    """Run `argv`; its exit code, peak RSS (ru_maxrss, from os.wait4), RSS samples and output lines."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    lines: list[tuple[float, str]] = []

    def read():
        for line in proc.stdout:
            lines.append((round(time.monotonic() - t0, 2), line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples = []
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        samples.append((round(time.monotonic() - t0, 2), _rss(proc.pid)))
        time.sleep(every)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=10)
    return {"rc": proc.returncode, "peak_rss": usage.ru_maxrss * 1024, "samples": samples, "lines": lines,
            "seconds": round(time.monotonic() - t0, 1)}


def timeline(samples: list, lines: list) -> dict:
    """The sampled peak, when it came and the output line printed last before it, and one sample a
    second (max over the second)."""
    if not samples:
        return {"sampled_peak_rss": 0, "at_s": None, "after_line": None, "per_second": []}
    at, peak = max(samples, key=lambda s: s[1])
    before = [text for t, text in lines if t <= at]
    per: dict = {}
    for t, r in samples:
        per[int(t)] = max(per.get(int(t), 0), r)
    return {"sampled_peak_rss": peak, "at_s": at, "after_line": before[-1] if before else None,
            "per_second": [[t, r] for t, r in sorted(per.items())]}


def measure_case(name: str, case: dict, a, work: Path, probes: dict) -> dict:
    out = work / name
    overrides = train_overrides(case, a, str(out))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("RETORT_CACHE", os.environ.get("RETORT_CACHE", str(Path.home() / ".cache" / "retort")))
    key = json.dumps([case["teacher"], case["student"]])  # the same two models: counted once
    counts = probes[key] = probes.get(key) or probe(overrides, env)
    sums = model_sum(counts)
    argv = [sys.executable, "-m", "retort", "train", *overrides]
    run = measured_run(argv, env)
    if run["rc"] != 0:
        tail = "\n".join(text for _, text in run["lines"][-30:])
        raise SystemExit(f"real_memory: case {name}: retort train exited {run['rc']}:\n{tail}")
    peak, base, total = run["peak_rss"], counts["baseline_rss"], sums["total"]
    return {
        "command": "retort train " + " ".join(overrides),
        "teacher": counts["teacher"], "student": counts["student"],
        "model_sum_bytes": sums,
        "baseline_rss_bytes": base,
        "peak_rss_bytes": peak,
        "ratio": round(peak / total, 3),
        "ratio_above_baseline": round((peak - base) / total, 3),
        "target": TARGET,
        "meets_target": peak / total <= TARGET,
        "run_seconds": run["seconds"],
        "timeline": timeline(run["samples"], run["lines"]),
        "output_tail": [text for _, text in run["lines"][-12:]],
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(CASES), default="real")
    ap.add_argument("--cases", default="xtok,xtok_ckpt,same", help="comma-separated: xtok, xtok_ckpt, same")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=192)
    ap.add_argument("--work", default=None, help="run directories (default: a temporary directory)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "real_memory.json"))
    a = ap.parse_args(argv)
    names = [c for c in a.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES[a.size]]
    if unknown:
        ap.error(f"--cases: {', '.join(unknown)}; choose from {', '.join(CASES[a.size])}")
    results: dict = {"size": a.size, "steps": a.steps, "batch": a.batch, "max_len": a.max_len,
                     "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "cases": {}}
    probes: dict = {}
    with tempfile.TemporaryDirectory(prefix="retort-real-memory-") as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        for name in names:
            if (work / name).exists():
                raise SystemExit(f"real_memory: {work / name} exists; pass another --work (runs are not resumed here)")
            res = measure_case(name, CASES[a.size][name], a, work, probes)
            results["cases"][name] = res
            gib = 2 ** 30
            print(f"{name}: peak RSS {res['peak_rss_bytes'] / gib:.2f} GiB, model sum "
                  f"{res['model_sum_bytes']['total'] / gib:.2f} GiB, ratio {res['ratio']:.2f} "
                  f"({res['ratio_above_baseline']:.2f} above the {res['baseline_rss_bytes'] / gib:.2f} GiB import "
                  f"baseline); target <= {TARGET}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

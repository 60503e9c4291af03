"""What the data-centric benchmarks (shorten.py, das_select.py, teacher_choice.py) share: running
the CLI as a user does, training one student per data set and seed, and mean ± std over seeds."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RETORT = [str(Path(sys.executable).parent / "retort")]
KEYS = ("accuracy", "mean_tokens", "truncated", "by_difficulty", "tokens_by_difficulty", "length_difficulty_corr",
        "fidelity_to", "agree_answer", "agree_top1", "kl_ref_model")
EVAL = ["eval.n=500", "eval.max_new_tokens=192", "eval.batch_size=250"]


def sh(args: list[str], log: Path) -> float:
    """`retort ARGS`, output appended to `log`; exits on failure. Returns the wall seconds."""
    print("$ retort " + " ".join(args), flush=True)
    t0 = time.time()
    with open(log, "a") as f:
        done = subprocess.run(RETORT + args, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}); see {log}")
    return time.time() - t0


def capture(args: list[str], path: Path) -> dict:
    """The JSON `retort ARGS` prints, kept in `path` (read from there on a rerun)."""
    if not path.is_file():
        print("$ retort " + " ".join(args), flush=True)
        done = subprocess.run(RETORT + args, capture_output=True, text=True, check=True)
        path.write_text(done.stdout)
    return json.loads(path.read_text())


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def workdir(path: str) -> tuple[Path, Path]:
    work = Path(path)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RETORT_CACHE", str(work / "cache"))
    return work, work / "log.txt"


def students(work: Path, log: Path, sets: dict, seeds: list[int], base: list[str], times: dict | None = None) -> dict:
    """One sft student per data set and seed (`base`: the task, student and training overrides);
    a run already finished is read, not trained again. Returns {NAME-SEED: eval fields}."""
    runs = {}
    for name, path in sets.items():
        for seed in seeds:
            out = work / f"student-{name}-{seed}"
            if not (out / "summary.json").is_file():
                took = sh(["train", "method=sft", *base, "data.source=traces", f"data.traces={path}", f"out={out}",
                           f"seed={seed}", *EVAL], log)
                if times is not None:
                    times[f"{name}-{seed}"] = took
            ev = json.loads((out / "summary.json").read_text())["eval"]
            runs[f"{name}-{seed}"] = {k: ev.get(k) for k in KEYS}
    return runs


def table(runs: dict, names, seeds: list[int], keys) -> dict:
    """{NAME: {KEY: (mean, std) over seeds, or None}}."""
    out = {}
    for name in names:
        out[name] = {}
        for key in keys:
            vals = [runs[f"{name}-{s}"][key] for s in seeds if runs[f"{name}-{s}"].get(key) is not None]
            out[name][key] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0) if vals \
                else None
    return out


def fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x[0]:.{digits}f} ± {x[1]:.{digits}f}"


def save(path: str, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"command": " ".join(sys.argv), "cores": os.cpu_count(), **result}, indent=2))

"""One measured run in a fresh Python process: the benchmarks that time training (`onpolicy.py`,
`grpo_vs_trl.py`) start each arm as `python SCRIPT --child KIND SPEC.json`, CPU only, with the same
thread count on every side, and read the child's result from the last line it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_child(script: str, kind: str, spec: dict, threads: int, log: Path) -> dict:
    """Run `script --child kind spec` (spec written beside `log`, stderr into `log`); the JSON object
    the child printed last. A failed child stops the benchmark with the tail of its log."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    spec_file = log.with_suffix(".spec.json")
    spec_file.write_text(json.dumps(spec))
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, script, "--child", kind, str(spec_file)], check=False,
                              stdout=subprocess.PIPE, stderr=fh, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-15:])
        raise SystemExit(f"{kind} child failed (status {proc.returncode}); log {log}:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_timer():
    """A transformers `TrainerCallback` that keeps the time training began (`begin`) and each optimizer
    step's end (`times`): what the TRL arms' steps/s are computed from."""
    import time

    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.begin, self.times = None, []

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    return StepTimes()

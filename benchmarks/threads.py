"""Training step time by thread count, on an idle CPU and on one busy with another job.

What `threads=0` (auto, `retort.threads`) should pick: for each built-in preset and micro-batch, the
same `retort train` steps run pinned to 1 thread and to torch's default (one per core), each in its
own process, side by side in one run; then again while a second process keeps one core busy with
float32 matmuls (another torch job on the same machine). The time is the training loop's own
(metrics.jsonl `time` at the last step, model loading and evaluation excluded).

    python benchmarks/threads.py            # writes benchmarks/results/threads.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [  # preset, micro-batch, data.max_len, steps
    ("nano", 4, 64, 200),
    ("student", 32, 256, 40),
    ("teacher", 32, 160, 12),
]
BUSY = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
        "while True:\n    a = (a @ a).tanh()\n")


def step_time(preset: str, batch: int, max_len: int, steps: int, threads: int, root: Path) -> float:
    out = root / f"{preset}-{batch}-{threads}-{len(list(root.iterdir()))}"
    args = [sys.executable, "-m", "retort.cli", "train", f"out={out}", f"student.name=preset:{preset}",
            f"train.steps={steps}", f"train.batch_size={batch}", f"data.max_len={max_len}", "data.n_train=2000",
            "train.warmup_steps=1", f"train.log_every={steps}", "train.save_every=0", "eval.n=1",
            "eval.max_new_tokens=2", f"threads={threads}"]
    subprocess.run(args, check=True, capture_output=True, env={**os.environ, "RETORT_CACHE": str(root / "cache")})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r.get("step") == steps and "time" in r][-1]
    return last["time"] / steps


def measure(root: Path, cores: int, rows_done: int = 0) -> list[dict]:
    rows = []
    for i, (preset, batch, max_len, steps) in enumerate(CASES):
        # which thread count is timed first alternates from case to case (and between idle and busy)
        first, second = (1, cores) if (i + rows_done) % 2 == 0 else (cores, 1)
        t = {first: step_time(preset, batch, max_len, steps, first, root)}
        t[second] = step_time(preset, batch, max_len, steps, second, root)
        one, all_ = t[1], t[cores]
        rows.append({"preset": preset, "batch": batch, "max_len": max_len, "s_per_step_1": round(one, 4),
                     f"s_per_step_{cores}": round(all_, 4), "speedup_of_all_cores": round(one / all_, 2)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    cores = os.cpu_count() or 1
    result = {"cores": cores}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result["idle"] = measure(root, cores)
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
        try:
            result["busy"] = measure(root, cores, len(result["idle"]))
        finally:
            busy.kill()
    path = Path(__file__).parent / "results" / "threads.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

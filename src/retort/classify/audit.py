"""`retort audit track=classify`: membership inference on a classifier by per-row cross-entropy
(the arithmetic is `retort.audit.mia`'s).

Members and non-members are splits of the dataset (`--members train --nonmembers test` by
default; `val` too): for a run directory the dataset its config names, for a saved model
`task.name=` (then that the model was trained on the train split is an assumption, said in the
result). Canary exposure is a language-model audit (a secret ranked among candidate texts);
classifiers are refused `--canaries` rather than given a number that means something else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .data import load_dataset
from .eval import predict
from .models import check_fits, load, resolve

SPLITS = ("train", "val", "test")


def is_run_dir(path) -> bool:
    p = Path(path)
    return (p / "config.yaml").is_file() and (p / "model").is_dir()


def row_losses(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> np.ndarray:
    logits = predict(model, x, batch_size)
    return torch.nn.functional.cross_entropy(logits.double(), y, reduction="none").numpy()


def _rows(data, split: str, n: int, seed: int):
    x, y = data.split(split)
    if len(y) == 0:
        raise ConfigError(f"{data.name}: the {split} split is empty; membership inference needs rows on both sides")
    if len(y) > n:
        idx = torch.as_tensor(np.sort(np.random.default_rng(seed).choice(len(y), size=n, replace=False)))
        x, y = x[idx], y[idx]
    return x, y


def audit_models(run, targets: list, options: dict, console) -> dict:
    from ..audit import loss_attack, reference_attack, run_privacy
    from ..config import load_config
    from .config import ClassifyRun

    opts = {"members": None, "nonmembers": None, "reference": None, "n": 1000, "seed": 0, **options}
    if opts.get("canaries"):
        raise ConfigError("--canaries: canary exposure is measured on language models (track=lm); a classifier "
                          "gets membership inference only")
    members_split, nonmembers_split = opts["members"] or "train", opts["nonmembers"] or "test"
    for opt, split in (("--members", members_split), ("--nonmembers", nonmembers_split)):
        if split not in SPLITS:
            raise ConfigError(f"{opt} {split}: for classifiers a split of the dataset: {', '.join(SPLITS)}")
    if members_split == nonmembers_split:
        raise ConfigError(f"--members and --nonmembers are both {members_split}: they must be disjoint splits")
    targets = targets or [(run.model.name, run.model.name)]
    results, datasets = {}, {}
    for label, name in targets:
        run_dir = Path(name) if is_run_dir(name) else None
        task = load_config(ClassifyRun, str(run_dir / "config.yaml"), []).task if run_dir else run.task
        key = (str(task.name), task.val_fraction)
        if key not in datasets:
            datasets[key] = load_dataset(task)
        data = datasets[key]
        model_name = str(run_dir / "model") if run_dir else resolve(name, data.name)
        model, meta = load(model_name)
        check_fits(meta, data, f"model {label}")
        xm, ym = _rows(data, members_split, opts["n"], opts["seed"])
        xn, yn = _rows(data, nonmembers_split, opts["n"], opts["seed"] + 1)
        with console.status(f"{label}: scoring {len(ym)} members and {len(yn)} non-members"):
            lm, ln = row_losses(model, xm, ym, run.eval.batch_size), row_losses(model, xn, yn, run.eval.batch_size)
        assumed = "" if run_dir else " (assumed: the model was trained on it)"
        mia = {"members": f"{members_split} split of {data.name}{assumed}",
               "nonmembers": f"{nonmembers_split} split of {data.name}", "loss": loss_attack(lm, ln),
               "reference": None, "reference_model": None}
        if opts["reference"]:
            if opts["reference"] == "teacher":
                if run_dir is None:
                    raise ConfigError(f"--reference teacher: {label} is not a run directory, so it has no teacher")
                ref_name = resolve(load_config(ClassifyRun, str(run_dir / "config.yaml"), []).teacher.name, data.name)
            else:
                ref_name = resolve(opts["reference"], data.name)
            ref, ref_meta = load(ref_name)
            check_fits(ref_meta, data, "--reference")
            rm, rn = row_losses(ref, xm, ym, run.eval.batch_size), row_losses(ref, xn, yn, run.eval.batch_size)
            mia.update(reference=reference_attack(lm, ln, rm, rn), reference_model=ref_name)
        privacy = run_privacy(run_dir)
        results[label] = {"model": model_name, "run_dir": str(run_dir) if run_dir else None, "track": "classify",
                          "epsilon": privacy.get("epsilon") if privacy else None, "mia": mia,
                          **({"privacy": privacy} if privacy else {})}
    return results

"""`retort generations N track=classify ...`: a chain of self-distillation generations.

Generation 1 learns from `teacher.name`; generation k from generation k-1's model; every student
starts from a fresh initialisation (seed + k). Each generation is an ordinary run directory
(OUT/gen-K), so a crash resumes where it stopped and a finished generation is not trained again.
`method=recursive` gets the base teacher as its anchor. With `--alpha-hat` (method=borup) each
generation first trains at alpha=0 and alpha=1 (OUT/gen-K-alpha0, -alpha1), estimates the best
alpha on the validation split (`borup.alpha_hat`) and trains at it. OUT/generations.json holds, per
generation: the alpha used, and test accuracy, calibration, and agreement and KL with the *base*
teacher (drift over generations is what these methods are about). OUT must be new, empty, or a
chain this command made (it holds `chain.json`, written once the inputs are checked), so a
user's own files there, a `generations.json` included, are never overwritten.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import ConfigError
from ..lock import holding
from ..paths import atomic_write_text, entries, marked_dir
from .eval import metrics, predict
from .models import check_fits, load, resolve


CHAIN_MARKER = "chain.json"  # in OUT: a chain `retort generations` made (see `retort.paths.marked_dir`)


def _older_chain(chain: Path) -> bool:
    """A chain made before CHAIN_MARKER: generation run directories (config.yaml in gen-K) and
    generations.json, nothing else."""
    held = entries(chain) if chain.is_dir() else []
    return any(p.name.startswith("gen-") and (p / "config.yaml").is_file() for p in held) and \
        all(p.name == "generations.json" or p.name.startswith("gen-") for p in held)


def _train_generation(run, out: Path, teacher: str, seed: int, method_args: dict, console):
    from ..train import train
    from .evaluate import run_evaluator

    gen = replace(run, out=str(out), seed=seed, teacher=replace(run.teacher, name=teacher), method_args=method_args)
    train(gen, resume=True, evaluate=run_evaluator(gen), console=console)
    return out / "model"


@holding(lambda run, *_, **__: run.out)  # the chain's directory, one writer at a time
def run_generations(run, n: int, *, alpha_hat_search: bool = False, console=None) -> dict:
    from .methods import METHODS
    from .methods.borup import alpha_hat
    from ..track import get_track

    if n < 1:
        raise ConfigError(f"generations: N={n}; expected at least 1")
    if run.method not in ("borup", "recursive", "kd", "dkd", "pld"):
        raise ConfigError(f"generations: method={run.method} learns from no teacher; use borup, recursive, kd, dkd "
                          "or pld")
    if alpha_hat_search and run.method != "borup":
        raise ConfigError("--alpha-hat estimates borup's alpha; it needs method=borup")
    # OUT: new, empty, or a chain this command made (like a demo's directory): checked now, claimed
    # once the inputs are known to be good
    older = _older_chain(Path(run.out))
    chain = marked_dir(run.out, "out", CHAIN_MARKER, "retort generations", also_ours=older, mark=False)
    data = get_track(run.track).get_task(run.task)
    base = resolve(run.teacher.name, data.name)
    base_model, meta = load(base)
    check_fits(meta, data, "teacher")
    x, y = data.split("test")
    base_logits = predict(base_model, x)
    args = dict(run.method_args)
    if run.method == "recursive" and not args.get("anchor"):
        args["anchor"] = base
    get_track(run.track).load_student(replace(run, method_args=args), None, run.seed)  # method_args, student.name
    marked_dir(chain, "out", CHAIN_MARKER, "retort generations", also_ours=older)
    rows, teacher = [], base
    for k in range(1, n + 1):
        seed = run.seed + k
        row = {"generation": k, "teacher": teacher}
        if alpha_hat_search:
            if "val" not in data.x:
                raise ConfigError("--alpha-hat needs a validation split (task.val_fraction > 0)")
            preds = []
            for a in (0.0, 1.0):
                m = _train_generation(run, chain / f"gen-{k}-alpha{int(a)}", teacher, seed, {**args, "alpha": a},
                                      console)
                model, _ = load(str(m))
                preds.append(torch.softmax(predict(model, data.x["val"]), -1))
            onehot = torch.nn.functional.one_hot(data.y["val"], data.n_classes).float()
            args = {**args, "alpha": round(alpha_hat(preds[0], preds[1], onehot), 4)}
            row["alpha_hat"] = args["alpha"]
        if run.method == "borup":
            row["alpha"] = args.get("alpha", METHODS["borup"].Config().alpha)
        model_dir = _train_generation(run, chain / f"gen-{k}", teacher, seed, args, console)
        model, _ = load(str(model_dir))
        m = metrics(predict(model, x), y, base_logits)
        row.update({"accuracy": m["accuracy"], "ece": m["ece"], "nll": m["nll"],
                    "agree_base_teacher": m["agree_top1"], "kl_base_teacher": m["kl_teacher"]})
        summary = json.loads((chain / f"gen-{k}" / "summary.json").read_text())
        row["test_at_best_val"] = summary["eval"].get("test_at_best_val")
        rows.append(row)
        if console is not None:
            console.print(f"generation {k}: accuracy {row['accuracy']:.4f}, KL to the base teacher "
                          f"{row['kl_base_teacher']:.4f}" + (f", alpha {row['alpha']}" if "alpha" in row else ""))
        teacher = str(model_dir)
    result = {"method": run.method, "method_args": dict(run.method_args), "base_teacher": base,
              "base_teacher_accuracy": metrics(base_logits, y)["accuracy"], "generations": rows}
    atomic_write_text(chain / "generations.json", json.dumps(result, indent=2))
    return result

"""The methods table of `benchmarks/classify.py --part methods` (see its docstring). Every run is an
ordinary retort run directory under --work (a rerun skips what is finished)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from _verdict import Ordering, state

STEPS = ["train.steps=1500", "train.batch_size=64", "train.lr=3e-3", "train.eval_every=150", "train.log_every=500",
         "train.save_every=0"]

# the arms of the spec's PLD reproduction (1.5): CE, KD+CE at its two settings, DKD, PLD, PLD-ListMLE
PLD_ARMS = {
        "ce": ["method=ce"],
        "kd (CE 0.1, T=2)": ["method=kd", "method_args.ce_weight=0.1", "method_args.kd_weight=0.9",
                             "method_args.temperature=2"],
        "kd (CE 0.5, T=4)": ["method=kd", "method_args.ce_weight=0.5", "method_args.kd_weight=0.5",
                             "method_args.temperature=4"],
        "dkd": ["method=dkd"],
        "pld": ["method=pld"],
        "pld-listmle": ["method=pld", "method_args.weights=uniform"],
        "pld (T=4)": ["method=pld", "method_args.temperature=4"],  # retort's check: softer weights
}
# (dataset, student, teacher, arms): arm -> overrides; the spec's sections in comments
TABLES = {
    # 1.5 PLD vs KD+CE vs PLD-ListMLE; DKD; LELP on many classes (the paper's stated limit: no gain)
    "digits": ("digits", "mlp:32", "builtin:teacher", {**PLD_ARMS, "lelp (S=2)": ["method=lelp", "method_args.S=2"]}),
    "digits-3": ("digits-3", "mlp:32", "builtin:teacher", PLD_ARMS),
    # 2.5 LELP on digits-bin: 2 classes, 5 true subclasses each
    "digits-bin": ("digits-bin", "mlp:24", "builtin:teacher", {
        "ce": ["method=ce"],
        **{f"kd (alpha=0, T={t})": ["method=kd", "method_args.ce_weight=0", "method_args.kd_weight=1",
                                    f"method_args.temperature={t}"] for t in (1, 2, 4)},
        "lelp (S=5)": ["method=lelp", "method_args.S=5"],
        "lelp (S=5, no null space)": ["method=lelp", "method_args.S=5", "method_args.null_space=false"],
        "k-means subclasses (S=5)": ["method=lelp", "method_args.S=5", "method_args.subclasses=kmeans"],
        "oracle subclasses": ["method=lelp", "method_args.S=5", "method_args.subclasses=oracle"],
    }),
    # MNIST with the pretrained ccexam teacher (99.05%)
    "mnist": ("mnist", "mlp:64", "ccexam:mnist", {
        "ce": ["method=ce"],
        "kd (CE 0.1, T=4)": ["method=kd"],
        "dkd": ["method=dkd"],
        "pld": ["method=pld"],
        "pld (T=4)": ["method=pld", "method_args.temperature=4"],
        "lelp (S=2)": ["method=lelp", "method_args.S=2"],
    }),
}
ORDERINGS = {  # (table, a, relation, b, source)
    "digits": [("pld", ">=", "kd (CE 0.1, T=2)", "1.5"), ("pld", ">=", "kd (CE 0.5, T=4)", "1.5"),
               ("pld", ">=", "pld-listmle", "1.5"), ("lelp (S=2)", "~", "kd (CE 0.1, T=2)", "2.5")],
    "digits-3": [("pld", ">=", "kd (CE 0.1, T=2)", "1.5"), ("pld", ">=", "kd (CE 0.5, T=4)", "1.5"),
                 ("pld", ">=", "pld-listmle", "1.5")],
    "digits-bin": [("oracle subclasses", ">=", "lelp (S=5)", "2.5"), ("lelp (S=5)", ">", "kd (alpha=0, T=2)", "2.5"),
                   ("kd (alpha=0, T=2)", "~", "ce", "2.5"), ("lelp (S=5)", ">=", "k-means subclasses (S=5)", "2.5")],
    "mnist": [("pld", ">=", "kd (CE 0.1, T=4)", "1.5")],
}


def _mean_std(v):
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def _kl(chain: str, arm: str, gen: int) -> tuple:
    return (chain, arm, "*", "kl", gen)


# every ordering BENCHMARKS.md states about these tables, judged by benchmarks/_verdict.py (paired by seed):
# the tables' on the last accuracy, the generation chains' on the KL to the base teacher (lower: less drift)
VERDICTS = [
    *(Ordering(f"{key}: {a} {rel} {b} (§{src})", ("tables", key, "rows", a, "accuracy"), rel,
               ("tables", key, "rows", b, "accuracy")) for key, checks in ORDERINGS.items() for a, rel, b, src in checks),
    # KD and DKD against plain CE on the same student (what the tables' discussion claims)
    *(Ordering(f"{key}: {arm} > ce", ("tables", key, "rows", arm, "accuracy"), ">", ("tables", key, "rows", "ce", "accuracy"))
      for key, (_, _, _, arms) in TABLES.items() for arm in arms if arm.startswith(("kd (CE", "dkd"))),
    Ordering("borup, weight decay 0.5: alpha=0 drifts from the base teacher (KL g5 > g1)",
             _kl("borup_regularised", "alpha=0.0", 4), ">", _kl("borup_regularised", "alpha=0.0", 0)),
    *(Ordering(f"borup, weight decay 0.5: KL g5 alpha={a} > alpha={b}", _kl("borup_regularised", f"alpha={a}", 4), ">",
               _kl("borup_regularised", f"alpha={b}", 4)) for a, b in ((0.0, 0.2), (0.2, 0.5), (0.5, 1.0))),
    Ordering("recursive: unanchored (a=0), the KL grows (g10 > g1)", _kl("recursive", "a=0.0", 9), ">",
             _kl("recursive", "a=0.0", 0)),
    *(Ordering(f"recursive: KL g10 a={a} > a={b}", _kl("recursive", f"a={a}", 9), ">", _kl("recursive", f"a={b}", 9))
      for a, b in ((0.0, 0.1), (0.1, 0.3), (0.3, 0.5))),
    Ordering("recursive: accuracy g10 a=0.5 > a=0", ("recursive", "a=0.5", "*", "accuracy", 9), ">",
             ("recursive", "a=0.0", "*", "accuracy", 9)),
]


def summarise(result: dict) -> dict:
    """The generation chains' per-generation means over seeds (`chains`: accuracy, KL to the base
    teacher, alpha) and every verdict, from the per-seed values: nothing is trained."""
    result["chains"] = {chain: {arm: {k: [statistics.mean(g) for g in zip(*(r[k] for r in runs))]
                                      for k in ("accuracy", "kl", "alpha") if all(None not in r.get(k, [None]) for r in runs)}
                                for arm, runs in result[chain].items()}
                        for chain in ("borup", "borup_regularised", "recursive") if chain in result}
    for table in result.get("tables", {}).values():
        table.pop("orderings", None)  # the verdicts of an older rule: `verdicts` replaces them
    result["verdicts"] = state(result, VERDICTS)
    return result


def _train(overrides: list[str], out: Path) -> dict:
    from retort.classify.config import ClassifyRun
    from retort.classify.evaluate import run_evaluator
    from retort.config import load_config
    from retort.train import train

    run = load_config(ClassifyRun, None, [*overrides, f"out={out}"])
    t0 = time.perf_counter()
    train(run, resume=True, evaluate=run_evaluator(run))
    summary = json.loads((out / "summary.json").read_text())
    return {**{k: v for k, v in summary["eval"].items() if k != "reliability"},
            "train_time_s": summary["train_time_s"], "wall_s": time.perf_counter() - t0}


def _teachers(names) -> dict:
    from retort.classify.teacher import ensure_teacher

    info = {}
    for name in names:
        path = ensure_teacher(None, ["track=classify", f"task.name={name}"])
        info[name] = json.loads((path.parent / "teacher.json").read_text())
    return info


def tables(seeds, work: Path) -> dict:
    out = {}
    for key, (data, student, teacher, arms) in TABLES.items():
        ss = seeds if data != "mnist" else seeds[:3]
        rows = {}
        for arm, overrides in arms.items():
            runs = []
            for seed in ss:
                slug = "".join(c if c.isalnum() else "_" for c in arm)
                runs.append(_train(["track=classify", f"task.name={data}", f"student.name={student}",
                                    f"teacher.name={teacher}", *STEPS, *overrides, f"seed={seed}"],
                                   work / key / f"{slug}-{seed}"))
            rows[arm] = {k: [r.get(k) for r in runs] for k in ("accuracy", "test_at_best_val", "ece", "agree_top1",
                                                              "train_time_s")}
            rows[arm]["teacher_accuracy"] = runs[0].get("teacher_accuracy")
            m, s = _mean_std(rows[arm]["accuracy"])
            print(f"{key:10s} {arm:28s} {m:.4f} +- {s:.4f}", flush=True)
        out[key] = {"dataset": data, "student": student, "teacher": teacher, "seeds": ss, "rows": rows}
    return out


def borup_chains(seeds, work: Path, gens: int = 5, weight_decay: float | None = None) -> dict:
    """4.5: self-distillation over generations on digits with the MSE-on-softmax loss; alpha in
    {0, 0.2, 0.5, 1} and the two-run alpha-hat; teacher = student architecture, trained with ce.
    `weight_decay`: the students' (AdamW, decoupled): the regularisation that, in the kernel
    picture, self-distillation compounds and the ground truth dampens."""
    from retort.classify.config import ClassifyRun
    from retort.classify.generations import run_generations
    from retort.config import load_config

    teacher_args = ["track=classify", "task.name=digits", "student.name=mlp:128", *STEPS]
    base, name = teacher_args, "borup"
    if weight_decay is not None:
        base, name = [*teacher_args, f"train.weight_decay={weight_decay}"], f"borup-wd{weight_decay}"
    res = {}
    for seed in seeds:
        t = work / "borup" / f"teacher-{seed}"  # the same teachers (plain ce)
        _train([*teacher_args, "method=ce", f"seed={seed}"], t)
        for arm, extra, hat in [(f"alpha={a}", [f"method_args.alpha={a}"], False) for a in (0.0, 0.2, 0.5, 1.0)] + \
                [("alpha-hat", [], True)]:
            run = load_config(ClassifyRun, None, [*base, "method=borup", *extra, f"seed={seed}",
                                                  f"teacher.name={t / 'model'}",
                                                  f"out={work / name / f'{arm}-{seed}'}"])
            r = run_generations(run, gens, alpha_hat_search=hat)
            res.setdefault(arm, []).append({"gen0": r["base_teacher_accuracy"],
                                            "accuracy": [g["accuracy"] for g in r["generations"]],
                                            "kl": [g["kl_base_teacher"] for g in r["generations"]],
                                            "alpha": [g.get("alpha") for g in r["generations"]]})
        print(f"{name} seed {seed} done", flush=True)
    return res


def recursive_chains(seeds, work: Path, gens: int = 10) -> dict:
    """5.3(2): Distill = fit an MLP student on p_k over digits; KL(teacher || student) to the base
    teacher and accuracy per generation for anchor weights a in {0, 0.1, 0.3, 0.5}."""
    from retort.classify.config import ClassifyRun
    from retort.classify.generations import run_generations
    from retort.config import load_config

    base = ["track=classify", "task.name=digits", "student.name=mlp:32", "teacher.name=builtin:teacher",
            "train.steps=1000", "train.batch_size=64", "train.lr=3e-3", "train.eval_every=0", "train.log_every=500",
            "train.save_every=0", "method=recursive"]
    res = {}
    for seed in seeds:
        for a in (0.0, 0.1, 0.3, 0.5):
            run = load_config(ClassifyRun, None, [*base, f"method_args.a={a}", f"seed={seed}",
                                                  f"out={work / 'recursive' / f'a{a}-{seed}'}"])
            r = run_generations(run, gens)
            res.setdefault(f"a={a}", []).append({"kl": [g["kl_base_teacher"] for g in r["generations"]],
                                                 "accuracy": [g["accuracy"] for g in r["generations"]]})
        print(f"recursive seed {seed} done", flush=True)
    return res


def methods(args) -> dict:
    seeds = [int(s) for s in (args.seeds or "0,1,2,3,4").split(",")]
    work = Path(args.work) / "methods"
    t0 = time.time()
    teachers = _teachers(["digits", "digits-3", "digits-bin"])
    result = {"teachers": teachers, "tables": tables(seeds, work),
              "borup": borup_chains(seeds[:3], work), "borup_regularised": borup_chains(seeds[:3], work, weight_decay=0.5),
              "recursive": recursive_chains(seeds[:3], work)}
    result["wall_s"] = round(time.time() - t0, 1)
    return summarise(result)

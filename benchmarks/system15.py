"""System-1.5's accuracy/compute curve (methods/llm.md §13.4), against CoT sft and no-CoT sft on
the same task, student and steps, >= 3 seeds.

Per seed, the small student preset from scratch on the built-in task:
- `cot`: sft on the worked solutions (it writes its CoT, then the answer);
- `nocot`: sft on the answers alone;
- `latent`: System-1.5 stage 1 (`method=system15`), evaluated on the full path (lambda 0/0): the
  latent-uniform (Coconut/CODI-like) row of the paper's ordering;
- `s15`: stage 2 from it (the shortcuts), evaluated at every (lambda_depth, lambda_step) of the grid.
Every model is evaluated greedily on the same test problems by `retort eval`, which reports
accuracy, answer tokens, decoder-layer runs over the generated positions per prompt (the compute
axis: a plain decoder runs all its layers for every token it writes) and wall seconds. The wall
seconds are of different engines: the sft rows decode on retort's fast engine, the System-1.5 rows
through transformers' layers with their routers; layer runs per prompt compare the work itself.

    python benchmarks/system15.py [--seeds 0,1,2] [--steps 2000] [--stage2-steps 1000]
        [--depth 0,0.25,0.5,0.75,1] [--step 0,0.5,1] [--work /tmp/retort-system15]
        [--out benchmarks/results/system15.json]

Every step is the CLI a user runs (printed as it goes), in this process; a rerun with the same
--work skips finished runs and evaluations. The orderings the spec expects (ORDERINGS) are judged by
benchmarks/_verdict.py on the per-seed values and written under `verdicts`; `--verdicts-only`
recomputes them from a finished results file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _verdict import Ordering, restate, state

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("accuracy", "mean_tokens", "layers_per_token", "layer_runs_per_prompt", "steps_skipped", "wall_s")
DEFAULT = "s15-d0.5-s0.5"  # the curve's point the orderings read (method_args' default thresholds)
# the spec's expected ordering (§13.4), paired by seed
ORDERINGS = [Ordering(claim, ("runs", a + "-{seed}", metric), rel, ("runs", b + "-{seed}", metric))
             for claim, a, rel, b, metric in [
                 ("CoT sft >= System-1.5 (accuracy)", "cot", ">=", DEFAULT, "accuracy"),
                 ("System-1.5 > latent-uniform (accuracy)", DEFAULT, ">", "latent", "accuracy"),
                 ("latent-uniform > no-CoT sft (accuracy)", "latent", ">", "nocot", "accuracy"),
                 ("System-1.5 > no-CoT sft (accuracy)", DEFAULT, ">", "nocot", "accuracy"),
                 ("System-1.5 < latent-uniform (layer runs per prompt)", DEFAULT, "<", "latent",
                  "layer_runs_per_prompt"),
                 ("latent-uniform < CoT sft (layer runs per prompt)", "latent", "<", "cot", "layer_runs_per_prompt"),
                 ("System-1.5 < CoT sft (wall seconds of the greedy pass)", DEFAULT, "<", "cot", "wall_s"),
             ]]


def retort(args: list[str]) -> None:
    """`retort ARGS`, in this process; exits on failure."""
    from retort.cli import main

    print("$ retort " + " ".join(args), flush=True)
    rc = main(args)
    if rc:
        sys.exit(f"retort {args[0]} failed ({rc})")


def train(out: Path, args: list[str]) -> Path:
    if not (out / "summary.json").is_file():
        retort(["train", *args, f"out={out}"])
    return out / "model"


def evaluate(path: Path, models: dict, args: list[str], flags: list[str] = ()) -> dict:
    if not path.is_file():
        retort(["eval", *[x for k, v in models.items() for x in ("-m", f"{k}={v}")], *args, *flags, "--json", str(path)])
    res = json.loads(path.read_text())
    return {label: {k: res[label].get(k) for k in KEYS} for label in models}


def grid(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def curve(runs: dict, seeds: list[int], names: list[str]) -> dict:
    """{NAME: {KEY: [mean, std] over seeds}}."""
    out = {}
    for name in names:
        out[name] = {}
        for key in KEYS:
            vals = [runs[f"{name}-{s}"][key] for s in seeds if runs[f"{name}-{s}"].get(key) is not None]
            out[name][key] = [statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0] if vals else None
    return out


def _cell(v, f: str) -> str:
    return "-" if v is None else f"{v[0]:{f}} ± {v[1]:{f}}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--student", default="preset:student")
    ap.add_argument("--steps", type=int, default=2000, help="sft and stage-1 steps")
    ap.add_argument("--stage2-steps", type=int, default=1000)
    ap.add_argument("--latent-steps", type=int, default=6)
    ap.add_argument("--n-train", type=int, default=64000)
    ap.add_argument("--eval-n", type=int, default=500)
    ap.add_argument("--max-new-tokens", type=int, default=96, help="of the evaluations (a CoT answer is ~30)")
    ap.add_argument("--depth", default="0,0.25,0.5,0.75,1", help="the lambda_depth grid")
    ap.add_argument("--step", default="0,0.5,1", help="the lambda_step grid")
    ap.add_argument("--train-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="an option for every training run, e.g. train.batch_size=16 (repeatable)")
    ap.add_argument("--work", default="/tmp/retort-system15")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "system15.json"))
    ap.add_argument("--verdicts-only", action="store_true", help="recompute the verdicts of --out; run nothing")
    args = ap.parse_args(argv)
    if args.verdicts_only:
        restate(args.out, ORDERINGS)
        return json.loads(Path(args.out).read_text())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RETORT_CACHE", str(work / "cache"))
    seeds = [int(s) for s in args.seeds.split(",")]
    depths, steps = grid(args.depth), grid(args.step)
    if 0.5 not in depths or 0.5 not in steps:
        sys.exit("--depth and --step must include 0.5 (the point the orderings read)")
    base = ["task.name=modchain", f"data.n_train={args.n_train}",
            "train.batch_size=32", "train.lr=2e-3", "train.warmup_steps=50", "train.save_every=0",
            "train.log_every=50", "eval.n=1", "eval.max_new_tokens=8", *args.train_arg]  # the runs evaluate once, tiny
    ev = [f"eval.n={args.eval_n}", "eval.seed=0", f"eval.max_new_tokens={args.max_new_tokens}", "eval.batch_size=100"]
    s15 = [f"method_args.latent_steps={args.latent_steps}"]
    runs: dict = {}
    for seed in seeds:
        common = [*base, f"seed={seed}"]
        student = f"student.name={args.student}"
        models = {
            "cot": train(work / f"cot-{seed}", ["method=sft", "data.source=solutions", f"train.steps={args.steps}",
                                                student, *common]),
            "nocot": train(work / f"nocot-{seed}", ["method=sft", "data.source=answers", f"train.steps={args.steps}",
                                                    student, *common]),
            "latent": train(work / f"latent-{seed}", ["method=system15", "method_args.stage=1",
                                                      f"train.steps={args.steps}", student, *s15, *common]),
        }
        shortcuts = train(work / f"s15-{seed}", ["method=system15", "method_args.stage=2",
                                                 f"student.name={models['latent']}",
                                                 f"train.steps={args.stage2_steps}", *s15, *common])
        # the latent-uniform row: stage 1 on its full path (every layer, every step)
        for label, row in evaluate(work / f"eval-{seed}.json", models, ev,
                                   ["--lambda-depth", "0", "--lambda-step", "0"]).items():
            runs[f"{label}-{seed}"] = row
        for d in depths:
            for s in steps:
                name = f"s15-d{d:g}-s{s:g}"
                row = evaluate(work / f"eval-{name}-{seed}.json", {name: shortcuts}, ev,
                               ["--lambda-depth", str(d), "--lambda-step", str(s)])[name]
                runs[f"{name}-{seed}"] = row
    names = ["cot", "nocot", "latent", *[f"s15-d{d:g}-s{s:g}" for d in depths for s in steps]]
    result = {"command": " ".join(sys.argv if argv is None else ["benchmarks/system15.py", *argv]),
              "cores": os.cpu_count(), "seeds": seeds, "student": args.student, "steps": args.steps,
              "stage2_steps": args.stage2_steps, "latent_steps": args.latent_steps, "eval_n": args.eval_n,
              "runs": runs, "curve": curve(runs, seeds, names),
              "verdicts": state({"seeds": seeds, "runs": runs}, ORDERINGS)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("| model | accuracy | answer tokens | layers/token | layer runs/prompt | steps skipped | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        c = result["curve"][name]
        cells = [_cell(c[k], f) for k, f in (("accuracy", ".3f"), ("mean_tokens", ".1f"), ("layers_per_token", ".2f"),
                                              ("layer_runs_per_prompt", ".1f"), ("steps_skipped", ".2f"),
                                              ("wall_s", ".2f"))]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return result


if __name__ == "__main__":
    main()

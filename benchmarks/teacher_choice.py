"""Choosing the teacher, measured (methods/llm.md §3.4 DED, §4.4 AM): three teachers answer the
same prompts in three styles; the same student is trained on each one's correct traces (plain sft,
>= 3 seeds). Rows: each single source; the random pick (the mean over the three); the teacher
DED's smoke test chooses; the teacher with the best benchmark score of its own; the pooled data
after AM's filters (per-teacher perplexity limit under a reference model + 20-gram templates).

Built-in teachers on modchain prompts: `clean` (one worked line per operation), `terse` (two
operations per line: per_line=2) and `detours` (wrong steps corrected, doubts, a re-check):

    python benchmarks/teacher_choice.py [--seeds 0,1,2] [--n-prompts 2000] [--steps 1500]
                                        [--smoke-steps 300] [--work /tmp/retort-teachers]

Every step is the CLI a user runs; a rerun skips what is done.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shorten import manifest, sh  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-prompts", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--smoke-steps", type=int, default=300)
    ap.add_argument("--work", default="/tmp/retort-teachers")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher_choice.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.setdefault("RETORT_CACHE", str(work / "cache")))
    log = work / "log.txt"
    seeds = [int(s) for s in args.seeds.split(",")]
    ev = ["eval.n=500", "eval.max_new_tokens=192", "eval.batch_size=250"]

    sh(["teacher", "task.name=modchain"], log)
    sh(["teacher", "task.name=modchain", "task.difficulty.per_line=2", f"out={cache / 'teacher-modchain-terse'}"], log)
    sh(["teacher", "task.name=detours"], log)
    teachers = {"clean": str(cache / "teacher-modchain" / "model"),
                "terse": str(cache / "teacher-modchain-terse" / "model"),
                "detours": str(cache / "teacher-detours" / "model")}
    own = work / "teachers_eval.json"
    if not own.is_file():  # each teacher's own score on the same test prompts
        sh(["eval", *sum((["-m", f"{k}={v}"] for k, v in teachers.items()), []), "task.name=modchain", "--json", str(own),
            "eval.n=1000", "eval.max_new_tokens=192", "eval.batch_size=250"], log)
    bench = {k: r["accuracy"] for k, r in json.loads(own.read_text()).items()}
    traces = work / "traces"
    sh(["traces", "task.name=modchain", f"teachers=[{','.join(teachers.values())}]", f"out={traces}",
        f"n_prompts={args.n_prompts}", "sampling.n=1", "sampling.temperature=1.0", "sampling.max_new_tokens=192",
        "shard_prompts=500"], log)
    sets = {}
    for k, path in teachers.items():
        out = work / f"set-{k}"
        if not (out / "manifest.json").is_file():
            sh(["curate", str(traces), "--out", str(out), "--teacher", path, "--correct"], log)
        sets[k] = out
    # a neutral reference LM for AM's perplexities: the small preset trained on all three's correct traces
    pooled = work / "set-pooled"
    if not (pooled / "manifest.json").is_file():
        sh(["curate", str(traces), "--out", str(pooled), "--correct"], log)
    ref = work / "reference"
    if not (ref / "summary.json").is_file():
        sh(["train", "method=sft", "task.name=modchain", "student.name=preset:student", "data.source=traces",
            f"data.traces={pooled}", f"out={ref}", "train.steps=1000", "train.batch_size=32", "train.lr=2e-3",
            "train.save_every=0", "eval.fidelity=false", *ev], log)
    stats_file = work / "stats.json"
    if not stats_file.is_file():
        import subprocess

        from shorten import RETORT

        done = subprocess.run(RETORT + ["curate", str(traces), "--stats", "--ref-model", str(ref / "model")],
                              capture_output=True, text=True, check=True)
        stats_file.write_text(done.stdout)
    stats = json.loads(stats_file.read_text())
    smoke_file = work / "smoke.json"
    if not smoke_file.is_file():
        import subprocess

        from shorten import RETORT

        done = subprocess.run(RETORT + ["curate", str(traces), "--select-teacher", "preset:student", "--smoke-steps",
                                        str(args.smoke_steps), "--probe-n", "300"], capture_output=True, text=True,
                              check=True)
        smoke_file.write_text(done.stdout)
    smoke = json.loads(smoke_file.read_text())
    # AM: per-teacher limit at the teacher's own 90th percentile of reference perplexity is not
    # published; retort's reading: drop each teacher's traces above 1.5x its mean perplexity
    limits = ",".join(f"{teachers[k]}={1.5 * stats['reference_ppl'][teachers[k]]:.4f}" for k in teachers)
    am = work / "set-am"
    if not (am / "manifest.json").is_file():
        sh(["curate", str(traces), "--out", str(am), "--correct", "--max-ppl", limits, "--ref-model",
            str(ref / "model"), "--drop-templates"], log)
    sets["am"] = am
    runs = {}
    for k, path in sets.items():
        for seed in seeds:
            out = work / f"student-{k}-{seed}"
            if not (out / "summary.json").is_file():
                sh(["train", "method=sft", "task.name=modchain", "student.name=preset:student", "data.source=traces",
                    f"data.traces={path}", f"out={out}", f"seed={seed}", f"train.steps={args.steps}",
                    "train.batch_size=32", "train.lr=2e-3", "train.warmup_steps=50", "train.save_every=500",
                    "train.log_every=100", *ev], log)
            e = json.loads((out / "summary.json").read_text())["eval"]
            runs[f"{k}-{seed}"] = {x: e.get(x) for x in ("accuracy", "mean_tokens", "agree_answer", "agree_top1",
                                                          "kl_ref_model", "length_difficulty_corr")}

    def agg(k, key):
        vals = [runs[f"{k}-{s}"][key] for s in seeds if runs[f"{k}-{s}"].get(key) is not None]
        return (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0) if vals else None

    table = {k: {x: agg(k, x) for x in ("accuracy", "mean_tokens", "agree_answer", "agree_top1", "kl_ref_model",
                                         "length_difficulty_corr")} for k in sets}
    name_of = {v: k for k, v in teachers.items()}
    ranking = [name_of.get(n, n) for n in smoke["ranking_by_gain"]]
    result = {"command": " ".join(sys.argv), "cores": os.cpu_count(), "seeds": seeds, "teachers": teachers,
              "teacher_benchmark": bench, "by_teacher": stats.get("by_teacher"),
              "reference_ppl": stats.get("reference_ppl"), "smoke": smoke, "ded_ranking": ranking,
              "am_limits": limits, "runs": runs, "table": table,
              "data": {k: {"rows": manifest(p)["stats"]["rows"], "trace_tokens": manifest(p)["stats"]["tokens"]["mean"]}
                       for k, p in sets.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))

    def f(x, d=3):
        return "-" if x is None else f"{x[0]:.{d}f} ± {x[1]:.{d}f}"

    print("| data | teacher's own accuracy | reference ppl | length entropy | rows | student accuracy | "
          "tokens/answer | answer agreement | top-1 agreement |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in sets:
        t = table[k]
        path = teachers.get(k)
        bt = (stats.get("by_teacher") or {}).get(path, {}) if path else {}
        print(f"| {k} | {bench.get(k, float('nan')):.3f} | "
              f"{(stats.get('reference_ppl') or {}).get(path, float('nan')):.3f} | "
              f"{bt.get('tokens', {}).get('histogram_entropy', float('nan')):.3f} | {result['data'][k]['rows']} | "
              f"{f(t['accuracy'])} | {f(t['mean_tokens'], 1)} | {f(t['agree_answer'])} | {f(t['agree_top1'])} |")
    print(f"DED smoke ranking: {ranking}; best own benchmark: {max(bench, key=bench.get)}")


if __name__ == "__main__":
    main()

"""On-policy distillation, retort vs TRL, in one run: retort's GKD with lmbda=1 (`retort train
method=gkd`: every completion sampled from the student) against TRL's `DistillationTrainer` (always
on-policy), same teacher, same initial student, same prompt pool, same hyper-parameters. Measures
steps per second (first to last optimizer step: model loading, the lazy teacher load and the first
step's warm-up are excluded), the peak RSS of each training process, and the student's greedy test
accuracy afterwards, measured identically for both (retort's evaluator, the same test problems).

    pip install trl            # 1.16.0 here; keeps torch and transformers as they are
    python benchmarks/onpolicy.py [--steps 40] [--batch 32] [--max-new-tokens 96] [--temperature 1.0] \
        [--beta 0.5] [--lr 5e-4] [--seed 0] [--threads 2] [--eval-n 500] [--n-prompts 4000] \
        [--warm-steps 300] [--work /tmp/retort-onpolicy] [--out benchmarks/results/onpolicy.json]

Models and data are built in: the teacher is `retort teacher`'s (trained and cached on first use,
~3 min); the student is `preset:student` warm-started with `retort train method=sft` on worked
solutions for `--warm-steps` steps (cached under `--work`, keyed by its settings), so that its
rollouts are not noise. Prompts are the modchain task's train split, `task.examples("train",
n_prompts, seed)` on both sides (retort: `data.n_train=n_prompts`; TRL: a `datasets.Dataset` with
those strings in its `prompt` column); each side draws `batch` of them per step in its own order.

Matched on both sides: 1 completion per prompt, `batch` prompts per optimizer step, no gradient
accumulation; sampling at `temperature`, top_p=1, no top-k, at most `max_new_tokens` tokens;
loss = generalized JSD(beta) per completion token, summed and divided by the batch's completion-token
count; fused AdamW on both sides (lr, betas 0.9/0.99, eps 1e-8, weight decay 0.01 on matrices only), grad-norm clip 1.0,
constant lr with no warmup (retort: `train.min_lr_ratio=1.0 train.warmup_steps=0`); fp32 on CPU with
`--threads` torch threads; seed. Both use one temperature for the rollouts and for the loss (TRL's
`temperature`, retort's `method_args.temperature`), so the loss is at temperature 1 only with
`--temperature 1`, the default (elsewhere retort is given `t_squared=false`, as TRL has no T^2).
Prompt tokenisation is checked, not assumed: the TRL child compares
`DistillationTrainer._tokenize_prompts` (what TRL generates from) with
`retort.lm.data.collate.encode_prompt` on every prompt of the pool and stops if any differ (the
character tokenizer has no chat template, and both add BOS through its post-processor). So is the
loss: TRL's `_chunked_divergence_loss` and retort's `fused_linear_divergence` are run on the same
random hidden states and heads at the run's beta (loss and gradient differences are recorded).

Not matched (each library's own design): the order prompts are drawn in. retort's batches come from
length-bucketed windows of its data (prompt + worked solution), so a batch's prompts, and so its
rollouts, are of similar length and its generation pads little; TRL takes a seeded random
permutation. The rollouts therefore differ (both are deterministic for a seed). Both put a stopped
completion's EOS in the loss and none on one cut at `max_new_tokens`. TRL samples with
transformers' `generate`; retort with its own engine (`retort.lm.rollout.fast`: KV cache, left
padding; greedy decoding gives `generate`'s tokens, tested). Both then run the student and the
teacher once over prompt + completion and take the divergence chunk by chunk from the last hidden
states and the lm_heads.

Each training runs in a fresh subprocess (`--child`) that reports `ru_maxrss` when it is done (the
whole process: the TRL child also imports trl, datasets and pandas; `rss_at_start_bytes` is recorded
beside it); the three students (warm start, retort, TRL) are then evaluated in one more subprocess.
`--retort-method kd` swaps in off-policy online KD on worked solutions (a stand-in for developing
this script without `method=gkd`; its numbers are not on-policy).

`--real smollm2` / `--real qwen-smollm2`: the same comparison at real size (packaged SmolLM2-135M or
Qwen2.5-Coder-0.5B teacher, a 10-layer pruned SmolLM2 student, reasoning-gym prompts through the chat
template, 128-token rollouts, `--reps` repetitions alternating, mean +- se; a third arm,
`retort-bf16`, samples from a bf16 copy of the student and holds the teacher in bf16): see
`benchmarks/_onpolicy_real.py`. Results: benchmarks/results/onpolicy_real_PAIR.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import _child  # noqa: E402

SIDES = ("retort", "trl")


# --------------------------------------------------------------------------- the two commands


def retort_overrides(a, student: str, teacher: str, out: str) -> list[str]:
    """`retort train` arguments of the retort side (`--retort-method gkd` is the benchmark)."""
    common = [f"student.name={student}", f"teacher.name={teacher}", f"out={out}", "task.name=modchain",
              f"data.n_train={a.n_prompts}", f"train.batch_size={a.batch}", "train.grad_accum=1",
              f"train.steps={a.steps}", f"train.lr={a.lr}", "train.warmup_steps=0", "train.min_lr_ratio=1.0",
              "train.weight_decay=0.01", "train.beta1=0.9", "train.beta2=0.99", "train.clip_grad=1.0",
              "train.precision=fp32", "train.log_every=1", "train.save_every=0", "train.eval_every=0",
              # the CLI evaluates after training (past the timed steps); keep it to one problem: the
              # benchmark's own evaluation, the same for both sides, is the one reported
              "eval.n=1", "eval.batch_size=1", f"eval.max_new_tokens={a.max_new_tokens}", f"seed={a.seed}"]
    if a.retort_method == "gkd":
        # data.source=solutions: gkd draws its prompts from the data; at lmbda=1 every completion
        # is replaced by a fresh student sample, so the solutions themselves are never trained on
        method = ["method=gkd", "method_args.lmbda=1.0", "method_args.divergence=jsd", f"method_args.beta={a.beta}",
                  f"method_args.temperature={a.temperature}", f"method_args.max_new_tokens={a.max_new_tokens}",
                  "method_args.top_p=1.0", "data.source=solutions"]
        if a.temperature != 1.0:
            method.append("method_args.t_squared=false")  # TRL's loss has no T^2 factor
    else:  # development stand-in: off-policy token-level KD on worked solutions, teacher online
        method = ["method=kd", "method_args.teacher=online", "method_args.divergence=jsd",
                  f"method_args.beta={a.beta}", "method_args.temperature=1.0", "data.source=solutions"]
    return method + common


def trl_config_kwargs(a, out: str) -> dict:
    """`DistillationConfig` fields of the TRL side."""
    return dict(
        output_dir=out, max_steps=a.steps, per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch_fused",
        weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.99, adam_epsilon=1e-8, max_grad_norm=1.0,
        beta=a.beta, temperature=a.temperature, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0,
        max_completion_length=a.max_new_tokens, use_vllm=False, shuffle_dataset=True,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, seed=a.seed,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        log_completions=False,
    )


# --------------------------------------------------------------------------- children


def _setup_child(threads: int):
    import torch

    torch.set_num_threads(threads)
    from retort.cli import _quiet_libraries

    _quiet_libraries()


def _rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rate(times: list[float]) -> dict:
    """Steps per second between the end of the first and the end of the last optimizer step."""
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    return {"steps_timed": len(times) - 1, "first_to_last_s": span,
            "steps_per_s": (len(times) - 1) / span if len(times) > 1 and span > 0 else float("nan"),
            "first_step_s": times[0]}


def _loss_parity(beta: float, temperature: float) -> dict:
    """TRL's chunked generalized JSD vs retort's fused one on the same random hidden states and heads
    (student and teacher of different widths, masked positions): loss and gradients."""
    import torch
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    from retort.losses.fused import fused_linear_divergence

    g = torch.Generator().manual_seed(0)
    b, k, h, ht, v = 3, 7, 16, 24, 100
    hs = torch.randn(b, k, h, generator=g, requires_grad=True)
    w = torch.randn(v, h, generator=g, requires_grad=True)
    t_hs, t_w = torch.randn(b, k, ht, generator=g), torch.randn(v, ht, generator=g)
    mask = (torch.rand(b, k, generator=g) > 0.3).long()
    trl_loss = _chunked_divergence_loss(hs, t_hs, w, t_w, mask, beta, temperature=temperature)[0]
    trl_grads = torch.autograd.grad(trl_loss, (hs, w))
    labels = torch.where(mask.bool(), 0, -100).reshape(-1)
    ours = fused_linear_divergence(hs.reshape(-1, h), w, labels, teacher_hidden=t_hs.reshape(-1, ht),
                                   teacher_weight=t_w, divergence="jsd", beta=beta,
                                   temperature=temperature)[0] / mask.sum()
    our_grads = torch.autograd.grad(ours, (hs, w))
    return {"beta": beta, "temperature": temperature, "trl": trl_loss.item(), "retort": ours.item(),
            "max_abs_grad_diff": max(float((x - y).abs().max()) for x, y in zip(trl_grads, our_grads))}


def child_retort(spec: dict) -> dict:
    _setup_child(spec["threads"])
    from retort.cli import main as retort_main

    rss_start = _rss_now()
    t0 = time.time()
    rc = retort_main(["train", *spec["overrides"]])
    wall = time.time() - t0
    peak = _peak_rss()
    if rc:
        raise SystemExit(f"retort train exited with status {rc}")
    out = Path(spec["out"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    # `time` is seconds since the loop started, taken after each optimizer step
    # rollout_tokens: sampled tokens per completion, EOS not counted (gkd only)
    lengths = [r["rollout_tokens"] for r in rows if "rollout_tokens" in r]
    res = {"side": "retort", "steps": rows[-1]["step"], "peak_rss_bytes": peak, "rss_at_start_bytes": rss_start,
           "wall_s": wall, **_rate([r["time"] for r in rows]), "loss": [r["loss"] for r in rows],
           "completion_tokens_mean": sum(lengths) / len(lengths) if lengths else None,
           "command": "python -m retort.cli train " + " ".join(spec["overrides"]),
           "metrics_last": {k: v for k, v in rows[-1].items() if k not in ("step", "loss", "time")},
           "model": str(out / "model")}
    return res


def child_trl(spec: dict) -> dict:
    _setup_child(spec["threads"])
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retort.lm.config import TaskConfig
    from retort.lm.data.collate import encode_prompt
    from retort.lm.tasks import get_task

    rss_start = _rss_now()
    a = argparse.Namespace(**spec["args"])
    prompts = [e.prompt for e in get_task(TaskConfig(name="modchain")).examples("train", a.n_prompts, a.seed)]
    dataset = Dataset.from_dict({"prompt": prompts})
    tok = AutoTokenizer.from_pretrained(spec["student"])
    student = AutoModelForCausalLM.from_pretrained(spec["student"], dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], dtype=torch.float32)


    timer = _child.step_timer()
    cfg = trl.DistillationConfig(**spec["config"])
    t0 = time.time()
    trainer = trl.DistillationTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=dataset,
                                      processing_class=tok, callbacks=[timer])

    # Prompt tokenisation parity: the ids TRL generates from vs retort's encode_prompt, every prompt.
    trl_ids, _, _ = trainer._tokenize_prompts(prompts)
    retort_ids = [encode_prompt(tok, p) for p in prompts]
    bad = [i for i, (x, y) in enumerate(zip(trl_ids, retort_ids)) if list(x) != list(y)]
    if bad:
        i = bad[0]
        raise SystemExit(f"prompt tokenisation differs on {len(bad)}/{len(prompts)} prompts, e.g. {prompts[i]!r}: "
                         f"TRL {list(trl_ids[i])} vs retort {retort_ids[i]}")
    parity = {"prompts_checked": len(prompts), "identical": True, "chat_template": bool(tok.chat_template),
              "example": {"prompt": prompts[0], "ids": retort_ids[0]}}
    loss_check = _loss_parity(a.beta, a.temperature)

    trainer.train()
    wall = time.time() - t0
    peak = _peak_rss()
    trainer.save_model(spec["out"] + "/model")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    # completions/mean_length counts the EOS of completions that stopped; drop it to compare with retort
    lengths = [h["completions/mean_length"] - (1 - h["completions/clipped_ratio"]) for h in logs
               if "completions/mean_length" in h]
    res = {"side": "trl", "trl_version": trl.__version__, "steps": trainer.state.global_step,
           "peak_rss_bytes": peak, "rss_at_start_bytes": rss_start, "wall_s": wall,
           **_rate([t - timer.begin for t in timer.times]), "loss": [h["loss"] for h in logs],
           "completion_tokens_mean": sum(lengths) / len(lengths) if lengths else None,
           "metrics_last": {k: v for k, v in logs[-1].items() if k not in ("loss", "step")} if logs else {},
           "tokenisation": parity, "loss_parity": loss_check, "model": spec["out"] + "/model"}
    return res


def child_eval(spec: dict) -> dict:
    _setup_child(spec["threads"])
    from retort.lm.config import EvalConfig, ModelConfig, TaskConfig
    from retort.lm.eval import evaluate
    from retort.lm.models import load_model
    from retort.lm.tasks import get_task

    task = get_task(TaskConfig(name="modchain"))
    cfg = EvalConfig(split="test", n=spec["n"], seed=0, max_new_tokens=spec["max_new_tokens"], batch_size=100)
    out = {}
    for label, path in spec["models"].items():
        model, tok = load_model(ModelConfig(name=path))
        r = evaluate(model, tok, task, cfg, n_samples_kept=2)
        out[label] = {k: r[k] for k in ("accuracy", "n", "mean_tokens", "truncated", "by_difficulty", "samples")}
    return out


CHILDREN = {"retort": child_retort, "trl": child_trl, "eval": child_eval}


def _children() -> dict:
    import _onpolicy_real

    return CHILDREN | _onpolicy_real.CHILDREN


def run_child(kind: str, spec: dict, threads: int, log: Path) -> dict:
    return _child.run_child(__file__, kind, spec, threads, log)


# --------------------------------------------------------------------------- preparation


def warm_start(a, work: Path, log: Path) -> tuple[Path, list[str]]:
    """preset:student after `--warm-steps` of sft on worked solutions; cached by its settings."""
    run = work / f"warm-sft-{a.warm_steps}steps-seed{a.seed}"
    args = ["train", "method=sft", "student.name=preset:student", "task.name=modchain", "data.source=solutions",
            "data.n_train=64000", f"train.steps={a.warm_steps}", "train.batch_size=32", "train.lr=2e-3",
            "train.warmup_steps=50", "train.save_every=100", "train.log_every=50", "eval.n=100",
            f"eval.max_new_tokens={a.max_new_tokens}", f"seed={a.seed}", f"out={run}"]
    if not (run / "model" / "model.safetensors").is_file():
        resume = ["--resume"] if (run / "config.yaml").is_file() else []
        print(f"warm start: retort {' '.join(args)}", flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), CUDA_VISIBLE_DEVICES="",
                   PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        with log.open("w") as fh:
            rc = subprocess.run([sys.executable, "-m", "retort.cli", *args, *resume], check=False, stdout=fh, stderr=fh,
                                env=env).returncode
        if rc:
            raise SystemExit(f"warm-start training failed (status {rc}); log {log}")
    else:
        print(f"warm start: cached in {run}", flush=True)
    return run / "model", args


def ratios(results: dict) -> dict:
    """retort over TRL, as BENCHMARKS.md prints them (one run each: a measurement, not a verdict)."""
    if "retort" not in results or "trl" not in results:
        return {}
    r, t = results["retort"], results["trl"]
    return {"steps_per_s_retort_over_trl": r["steps_per_s"] / t["steps_per_s"],
            "peak_rss_retort_over_trl": r["peak_rss_bytes"] / t["peak_rss_bytes"],
            "order": list(results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps on each side")
    ap.add_argument("--batch", type=int, default=32, help="prompts per optimizer step (1 completion each)")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="completion length limit (training and eval)")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (both sides: also the loss's)")
    ap.add_argument("--beta", type=float, default=0.5, help="generalized JSD beta (0 forward KL, 1 reverse KL)")
    ap.add_argument("--lr", type=float, default=5e-4, help="constant learning rate, no warmup")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every child")
    ap.add_argument("--eval-n", type=int, default=500, help="test problems for the greedy accuracy")
    ap.add_argument("--n-prompts", type=int, default=4000, help="train prompts in the pool both sides draw from")
    ap.add_argument("--warm-steps", type=int, default=300, help="sft steps of the warm-started student")
    ap.add_argument("--teacher", default=None, help="teacher model dir (default: retort's built-in, trained if needed)")
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=[*SIDES, "retort-bf16"],
                    help="arms to run (--real runs retort, retort-bf16 and trl unless told)")
    ap.add_argument("--retort-method", default="gkd", choices=["gkd", "kd"],
                    help="gkd: the benchmark; kd: off-policy stand-in for development")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "retort-onpolicy"),
                    help="scratch dir (the warm-start student is cached here)")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/onpolicy.json; with "
                    "--real: onpolicy_real_PAIR.json)")
    ap.add_argument("--real", choices=["smollm2", "qwen-smollm2"], default=None,
                    help="real-size mode (benchmarks/_onpolicy_real.py): packaged teacher, 10-layer pruned "
                    "SmolLM2 student, reasoning-gym prompts; defaults become --steps 10 --batch 4 "
                    "--max-new-tokens 128 --n-prompts 200 --lr 1e-5")
    ap.add_argument("--reps", type=int, default=3, help="--real: repetitions, the side that runs first alternating")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--summarise-only", action="store_true", help="recompute the ratios of --out; run nothing")
    a = ap.parse_args()
    a.out_given = a.out is not None
    if a.out is None:
        a.out = str(ROOT / "benchmarks" / "results" / "onpolicy.json")
    if a.summarise_only:
        done = json.loads(Path(a.out).read_text())
        done["ratios"] = ratios(done["results"])
        Path(a.out).write_text(json.dumps(done, indent=2, default=str))
        return
    if a.child:
        kind, spec_file = a.child
        print(json.dumps(_children()[kind](json.loads(Path(spec_file).read_text())), default=str))
        return
    if "retort-bf16" in a.sides and not a.real:
        raise SystemExit("--sides retort-bf16 is an arm of --real")
    if a.real:
        import _onpolicy_real

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        sys.path.insert(0, str(ROOT / "src"))
        _onpolicy_real.run(a, run_child)
        return

    if a.steps * a.batch > a.n_prompts:
        print(f"note: {a.steps} x {a.batch} prompts > --n-prompts {a.n_prompts}: both sides will see prompts again")
    if a.temperature != 1.0:
        print(f"note: both sides apply --temperature {a.temperature} to their loss as well as to sampling")
    command = " ".join(["python", "benchmarks/onpolicy.py", *sys.argv[1:]])
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    torch.set_num_threads(a.threads)
    from retort.cli import _quiet_libraries
    from retort.lm.methods import METHODS

    _quiet_libraries()
    if "retort" in a.sides and a.retort_method not in METHODS:
        raise SystemExit(f"retort has no method {a.retort_method!r} (methods: {', '.join(METHODS)}); "
                         "`--retort-method kd` runs the off-policy stand-in")
    if "trl" in a.sides:
        import trl

        if not hasattr(trl, "DistillationTrainer"):
            raise SystemExit(f"trl {trl.__version__} has no DistillationTrainer; pip install -U trl")

    if a.teacher:
        teacher = Path(a.teacher)
    else:
        from rich.console import Console

        from retort.lm.teacher import ensure_teacher

        teacher = ensure_teacher(overrides=["task.name=modchain"], console=Console(stderr=True))
    student, warm_args = warm_start(a, work, work / "warm.log")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = work / f"run-{stamp}"
    runs.mkdir(parents=True)
    results: dict = {}
    # one run per side: the side that goes first alternates with --seed (even: as given, odd: reversed),
    # so repetitions at seeds 0, 1, ... do not always time the same side first
    for side in (a.sides if a.seed % 2 == 0 else a.sides[::-1]):
        out = runs / side
        if side == "retort":
            spec = {"threads": a.threads, "out": str(out),
                    "overrides": retort_overrides(a, str(student), str(teacher), str(out))}
            print(f"retort: python -m retort.cli train {' '.join(spec['overrides'])}", flush=True)
        else:
            spec = {"threads": a.threads, "out": str(out), "student": str(student), "teacher": str(teacher),
                    "args": vars(a) | {"child": None}, "config": trl_config_kwargs(a, str(out))}
            fields = ", ".join(f"{k}={v!r}" for k, v in spec["config"].items() if k != "output_dir")
            print(f"trl: DistillationTrainer(model=WARM, teacher_model=TEACHER, args=DistillationConfig({fields}))",
                  flush=True)
        results[side] = run_child(side, spec, a.threads, runs / f"{side}.log")
        r = results[side]
        print(f"  {side}: {r['steps']} steps, {r['steps_per_s']:.3f} steps/s, peak RSS "
              f"{r['peak_rss_bytes'] / 2**20:.0f} MiB, loss {r['loss'][0]:.4f} -> {r['loss'][-1]:.4f}", flush=True)

    models = {"warm start": str(student), **{side: results[side]["model"] for side in a.sides}}
    print(f"eval: greedy, {a.eval_n} test problems (seed 0), max {a.max_new_tokens} new tokens", flush=True)
    acc = run_child("eval", {"threads": a.threads, "n": a.eval_n, "max_new_tokens": a.max_new_tokens,
                             "models": models}, a.threads, runs / "eval.log")

    print()
    diffs = list(next(iter(acc.values()))["by_difficulty"])
    print(f"{'':12s} {'steps/s':>8s} {'s/step':>7s} {'peak RSS':>9s} {'loss 1st':>8s} {'loss last':>9s} "
          f"{'tok/compl':>9s} {'accuracy':>8s}  by #ops {' / '.join(diffs)}")
    for label in models:
        ev = acc[label]
        byd = " / ".join(f"{v:.2f}" for v in ev["by_difficulty"].values())
        if label in results:
            r = results[label]
            ln = r.get("completion_tokens_mean")
            print(f"{label:12s} {r['steps_per_s']:8.3f} {1 / r['steps_per_s']:7.2f} "
                  f"{r['peak_rss_bytes'] / 2**20:5.0f} MiB {r['loss'][0]:8.4f} {r['loss'][-1]:9.4f} "
                  f"{'-' if ln is None else f'{ln:.1f}':>9s} {ev['accuracy']:8.3f}  {byd}")
        else:
            print(f"{label:12s} {'':8s} {'':7s} {'':9s} {'':8s} {'':9s} {'':9s} {ev['accuracy']:8.3f}  {byd}")
    if "retort" in results and "trl" in results:
        print(f"retort / TRL: {results['retort']['steps_per_s'] / results['trl']['steps_per_s']:.2f}x steps/s, "
              f"{results['retort']['peak_rss_bytes'] / results['trl']['peak_rss_bytes']:.2f}x peak RSS")

    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import trl

        versions["trl"] = trl.__version__
    except ImportError:
        pass
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({
        "command": command, "settings": {k: v for k, v in vars(a).items() if k != "child"},
        "cores": os.cpu_count(), "versions": versions, "teacher": str(teacher),
        "warm_start": {"model": str(student), "command": "retort " + " ".join(warm_args)},
        "retort_command": "python -m retort.cli train " + " ".join(
            retort_overrides(a, "WARM_START", "TEACHER", "RUN")),
        "trl_config": {k: v for k, v in trl_config_kwargs(a, "RUN").items()},
        "results": results, "eval": acc, "ratios": ratios(results)}, indent=2, default=str))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

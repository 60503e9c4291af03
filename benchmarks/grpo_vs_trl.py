"""GRPO, retort vs TRL: `retort train method=grpo` against TRL's `GRPOTrainer` on the same student,
task, prompts, reward, group size and steps; reward curves and steps per second, `--reps`
repetitions (seed = repetition index) with the arm that goes first alternating, JSON out, and the
verdicts of ORDERINGS by benchmarks/_verdict.py.

    pip install trl            # 1.16.0 here; keeps torch and transformers as they are
    python benchmarks/grpo_vs_trl.py [--reps 3] [--steps 40] [--batch 32] [--generations 8] \
        [--max-new-tokens 64] [--temperature 1.0] [--lr 5e-4] [--threads 2] [--n-prompts 4000] \
        [--student preset:student] [--warm-steps 300] [--work /tmp/retort-grpo] [--out benchmarks/results/grpo_vs_trl.json]
    python benchmarks/grpo_vs_trl.py --verdicts-only    # recompute the verdicts of --out; run nothing

A tiny run, to check the script (seconds per arm; its numbers mean nothing):
    python benchmarks/grpo_vs_trl.py --student preset:nano --warm-steps 0 --steps 3 --batch 8 \
        --generations 4 --max-new-tokens 8 --reps 2 --n-prompts 32 --work /tmp/grpo-tiny --out /tmp/grpo-tiny.json

The student: `--student` (a retort preset or a model directory) after `--warm-steps` of `retort
train method=sft` on the built-in task's worked solutions (cached under --work by its settings), so
that its rollouts earn some reward; both arms start from that directory. Prompts: the modchain
task's train split, `task.examples("train", n_prompts, seed)`, on both sides (retort:
`data.n_train`; TRL: a `datasets.Dataset` with `prompt` and `answer` columns); each side draws
`batch / generations` prompts per step in its own order. Reward: retort's verifier of the task,
`task.reward(completion, answer, prompt)`, on both sides (TRL: a reward function calling it).
TRL tokenises prompts without special tokens, retort's `encode_prompt` adds BOS: the TRL prompts
carry the BOS token's text when that makes their ids equal, checked on every prompt (`tokenisation`).

Matched: G completions per prompt, `batch` completions per optimizer step, no accumulation, one
update per batch of rollouts (num_iterations 1), sampling at `temperature`, top_p 1, no top-k, at most
`max_new_tokens`; loss: DAPO token averaging, group std scaling, clip epsilon 0.2 / epsilon_high
(`--epsilon-high`), beta 0 (no reference model), truncated completions masked; AdamW (betas 0.9 /
0.999, eps 1e-8, no weight decay), constant lr with no warmup, grad-norm clip 1.0, fp32 on CPU with
`--threads` torch threads. retort's own filter of all-solved / none-solved groups is off
(`filter_groups=false`: TRL has none, and it changes the token average).

Not matched (each library's own design): the order prompts are drawn in (retort: length-bucketed
windows of its data; TRL: a seeded permutation, each prompt repeated G times), and the sampler
(retort's own engine, `retort.lm.rollout.fast`, against transformers' `generate`), so the rollouts
differ and the reward curves agree only in distribution: hence the "~" orderings, judged over seeds.

Measured per arm and seed: the mean reward of each step's rollouts (the curve; retort's `reward`
metric, TRL's `reward` log), its mean over the run and over the last half, and steps per second from
the end of the first optimizer step to the end of the last (model loading and the first step's
warm-up excluded). Each training runs in a fresh subprocess (`--child`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import _child
from _verdict import Ordering, restate, state

SIDES = ("retort", "trl")
TARGET_SPEEDUP = 1.5
ORDERINGS = [
    Ordering(f"retort grpo steps/s >= {TARGET_SPEEDUP}x TRL GRPOTrainer's (CPU)", ("per_seed", "speedup"), ">=",
             ("per_seed", "target_speedup")),
    Ordering("retort ~ TRL: mean reward over the run (the same curve within seed noise)",
             ("per_seed", "retort", "reward_mean"), "~", ("per_seed", "trl", "reward_mean")),
    Ordering("retort ~ TRL: mean reward over the last half of the run", ("per_seed", "retort", "reward_last_half"), "~",
             ("per_seed", "trl", "reward_last_half")),
]


# --------------------------------------------------------------------------- the two commands


def retort_overrides(a, student: str, out: str, seed: int) -> list[str]:
    return [f"student.name={student}", f"out={out}", "task.name=modchain", "data.source=solutions",
            f"data.n_train={a.n_prompts}", "method=grpo", f"method_args.num_generations={a.generations}",
            f"method_args.temperature={a.temperature}", "method_args.top_p=1.0",
            f"method_args.max_new_tokens={a.max_new_tokens}", "method_args.epsilon=0.2",
            f"method_args.epsilon_high={a.epsilon_high}", "method_args.beta=0.0", "method_args.loss_type=dapo",
            "method_args.scale_rewards=group", "method_args.mask_truncated_completions=true",
            "method_args.num_iterations=1", "method_args.filter_groups=false",
            f"train.batch_size={a.batch}", "train.grad_accum=1", f"train.steps={a.steps}", f"train.lr={a.lr}",
            "train.warmup_steps=0", "train.min_lr_ratio=1.0", "train.weight_decay=0.0", "train.beta1=0.9",
            "train.beta2=0.999", "train.clip_grad=1.0", "train.precision=fp32", "train.log_every=1",
            "train.save_every=0", "train.eval_every=0", "eval.n=1", "eval.batch_size=1",
            f"eval.max_new_tokens={a.max_new_tokens}", f"seed={seed}"]


def trl_config_kwargs(a, out: str, seed: int) -> dict:
    """`GRPOConfig` fields of the TRL side."""
    return {
        "output_dir": out, "max_steps": a.steps, "per_device_train_batch_size": a.batch, "gradient_accumulation_steps": 1,
        "num_generations": a.generations, "num_iterations": 1, "learning_rate": a.lr, "lr_scheduler_type": "constant",
        "warmup_steps": 0, "optim": "adamw_torch", "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
        "max_grad_norm": 1.0, "beta": 0.0, "epsilon": 0.2, "epsilon_high": a.epsilon_high, "loss_type": "dapo",
        "scale_rewards": "group", "mask_truncated_completions": True, "temperature": a.temperature, "top_p": 1.0, "top_k": 0,
        "max_completion_length": a.max_new_tokens, "use_vllm": False, "use_cpu": True, "bf16": False, "fp16": False,
        "gradient_checkpointing": False, "seed": seed, "logging_steps": 1, "report_to": "none", "save_strategy": "no",
        "disable_tqdm": True, "dataloader_num_workers": 0, "log_completions": False, "shuffle_dataset": True,
    }


# --------------------------------------------------------------------------- children


def _setup_child(threads: int):
    import torch

    torch.set_num_threads(threads)
    from retort.cli import _quiet_libraries

    _quiet_libraries()


def _rate(times: list[float]) -> dict:
    """Steps per second between the end of the first and the end of the last optimizer step."""
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    return {"steps_timed": len(times) - 1, "first_to_last_s": span,
            "steps_per_s": (len(times) - 1) / span if len(times) > 1 and span > 0 else float("nan")}


def child_retort(spec: dict) -> dict:
    _setup_child(spec["threads"])
    from retort.cli import main as retort_main

    t0 = time.time()
    rc = retort_main(["train", *spec["overrides"]])
    if rc:
        raise SystemExit(f"retort train exited with status {rc}")
    rows = [json.loads(x) for x in (Path(spec["out"]) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "loss" in r]
    return {"side": "retort", "steps": rows[-1]["step"], "wall_s": time.time() - t0, **_rate([r["time"] for r in rows]),
            "reward": [r["reward"] for r in rows], "completion_tokens": [r["completion_tokens"] for r in rows],
            "command": "python -m retort.cli train " + " ".join(spec["overrides"])}


def trl_reward(task, by_prompt: dict):
    """TRL's reward function (called with the batch's `prompts` and `completions` texts, and more by
    keyword): retort's verifier of `task`, each prompt's example looked up in `by_prompt`."""

    def reward(prompts, completions, **kw):
        return [float(task.reward(c, by_prompt[p].answer, by_prompt[p].prompt)) for p, c in zip(prompts, completions)]

    return reward


def child_trl(spec: dict) -> dict:
    _setup_child(spec["threads"])
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retort.lm.config import TaskConfig
    from retort.lm.data.collate import encode_prompt
    from retort.lm.tasks import get_task

    task = get_task(TaskConfig(name="modchain"))
    examples = task.examples("train", spec["n_prompts"], spec["seed"])
    tok = AutoTokenizer.from_pretrained(spec["student"])
    prompts = [str(e.prompt) for e in examples]
    want = [encode_prompt(tok, e.prompt) for e in examples]

    def ids(texts):
        return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    prefixed = False
    if ids(prompts) != want and tok.bos_token:  # TRL adds no special tokens; retort's prompts start with BOS
        prompts, prefixed = [tok.bos_token + p for p in prompts], True
    bad = [i for i, (x, y) in enumerate(zip(ids(prompts), want)) if x != y]
    if bad:
        raise SystemExit(f"prompt tokenisation differs on {len(bad)}/{len(prompts)} prompts, e.g. {prompts[bad[0]]!r}")
    reward = trl_reward(task, dict(zip(prompts, examples)))
    dataset = Dataset.from_dict({"prompt": prompts})
    student = AutoModelForCausalLM.from_pretrained(spec["student"], dtype=torch.float32)


    fields = set(trl.GRPOConfig.__dataclass_fields__)
    missing = sorted(set(spec["config"]) - fields)
    if missing:
        raise SystemExit(f"trl {trl.__version__}: GRPOConfig has no {', '.join(missing)} (this script matches 1.16)")
    timer = _child.step_timer()
    t0 = time.time()
    trainer = trl.GRPOTrainer(model=student, reward_funcs=[reward], args=trl.GRPOConfig(**spec["config"]),
                              train_dataset=dataset, processing_class=tok, callbacks=[timer])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {"side": "trl", "trl_version": trl.__version__, "steps": trainer.state.global_step,
            "wall_s": time.time() - t0, **_rate([t - timer.begin for t in timer.times]),
            "reward": [h["reward"] for h in logs],
            "completion_tokens": [h.get("completions/mean_length") for h in logs],
            "tokenisation": {"prompts_checked": len(prompts), "identical": True, "bos_text_prefixed": prefixed}}


CHILDREN = {"retort": child_retort, "trl": child_trl}


def run_child(kind: str, spec: dict, threads: int, log: Path) -> dict:
    return _child.run_child(__file__, kind, spec, threads, log)


# --------------------------------------------------------------------------- preparation and summary


def prepare_student(a, work: Path) -> tuple[Path, str]:
    """`--student` after `--warm-steps` of sft on worked solutions (none: the model as built), saved
    under --work and reused by its settings."""
    name = a.student.replace(":", "-").replace("/", "_")
    run = work / f"student-{name}-sft{a.warm_steps}"
    model = run / "model"
    if (model / "model.safetensors").is_file():
        return model, f"cached in {run}"
    if a.warm_steps == 0:
        from retort.lm.config import ModelConfig
        from retort.lm.models import load_model, save_model

        m, tok = load_model(ModelConfig(name=a.student), seed=0)
        save_model(m, tok, model)
        return model, f"{a.student} as built (seed 0), no warm start"
    args = ["train", "method=sft", f"student.name={a.student}", "task.name=modchain", "data.source=solutions",
            "data.n_train=64000", f"train.steps={a.warm_steps}", "train.batch_size=32", "train.lr=2e-3",
            "train.warmup_steps=50", "train.save_every=100", "train.log_every=50", "eval.n=100",
            f"eval.max_new_tokens={a.max_new_tokens}", "seed=0", f"out={run}"]
    resume = ["--resume"] if (run / "config.yaml").is_file() else []
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    with (work / "warm.log").open("w") as fh:
        rc = subprocess.run([sys.executable, "-m", "retort.cli", *args, *resume], check=False, stdout=fh, stderr=fh,
                            env=env).returncode
    if rc:
        raise SystemExit(f"warm-start training failed (status {rc}); log {work / 'warm.log'}")
    return model, "retort " + " ".join(args)


def order(rep: int) -> tuple:
    """The arms of repetition `rep`, first one first: alternating, so neither always runs first."""
    return SIDES if rep % 2 == 0 else SIDES[::-1]


def summarise(results: dict) -> dict:
    """`per_seed` (per arm: reward_mean, reward_last_half, steps_per_s by seed; speedup retort / TRL)
    and `verdicts`, from `runs`."""
    per: dict = {side: {"reward_mean": {}, "reward_last_half": {}, "steps_per_s": {}} for side in SIDES}
    per["speedup"], per["target_speedup"] = {}, {}
    for seed, arms in results["runs"].items():
        for side, r in arms.items():
            curve = r["reward"]
            per[side]["reward_mean"][seed] = statistics.mean(curve)
            per[side]["reward_last_half"][seed] = statistics.mean(curve[len(curve) // 2:])
            per[side]["steps_per_s"][seed] = r["steps_per_s"]
        if set(SIDES) <= set(arms):
            per["speedup"][seed] = arms["retort"]["steps_per_s"] / arms["trl"]["steps_per_s"]
            per["target_speedup"][seed] = TARGET_SPEEDUP
    results["per_seed"] = per
    both = [s for s, arms in results["runs"].items() if set(SIDES) <= set(arms)]
    results["seeds"] = [int(s) for s in both]
    results["verdicts"] = state(results, ORDERINGS) if both else []
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions (seeds 0 .. reps-1), arms alternating first")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per arm")
    ap.add_argument("--batch", type=int, default=32, help="completions per optimizer step (a multiple of --generations)")
    ap.add_argument("--generations", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="completion length limit")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (both sides)")
    ap.add_argument("--epsilon-high", type=float, default=0.2, help="upper clip of the ratio (0.28: DAPO's clip-higher)")
    ap.add_argument("--lr", type=float, default=5e-4, help="constant learning rate, no warmup")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every child")
    ap.add_argument("--n-prompts", type=int, default=4000, help="train prompts both sides draw from")
    ap.add_argument("--student", default="preset:student", help="a retort preset or a model directory")
    ap.add_argument("--warm-steps", type=int, default=300, help="sft steps before RL (0: the student as built)")
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "retort-grpo"), help="scratch directory")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grpo_vs_trl.json"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--verdicts-only", action="store_true", help="recompute the verdicts of --out; run nothing")
    a = ap.parse_args()
    if a.verdicts_only:
        for v in restate(a.out, ORDERINGS):
            print(f"{v['claim']}: {v['verdict']}")
        return
    if a.child:
        kind, spec_file = a.child
        print(json.dumps(CHILDREN[kind](json.loads(Path(spec_file).read_text()))))
        return
    if a.batch % a.generations:
        raise SystemExit(f"--batch {a.batch} must be a multiple of --generations {a.generations}")
    sys.path.insert(0, str(ROOT / "src"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(a.threads)
    if "trl" in a.sides:
        import trl

        if not hasattr(trl, "GRPOTrainer"):
            raise SystemExit(f"trl {trl.__version__} has no GRPOTrainer; pip install -U trl")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    student, how = prepare_student(a, work)
    print(f"student: {student} ({how})", flush=True)
    runs = Path(tempfile.mkdtemp(prefix=f"run-{time.strftime('%Y%m%d-%H%M%S')}-", dir=work))
    results: dict = {"command": " ".join(["python", "benchmarks/grpo_vs_trl.py", *sys.argv[1:]]),
                     "settings": {k: v for k, v in vars(a).items() if k != "child"}, "student": str(student),
                     "student_made_by": how, "cores": os.cpu_count(), "runs": {}, "order": {}}
    for rep in range(a.reps):
        seed = str(rep)
        results["runs"][seed], results["order"][seed] = {}, []
        for side in (s for s in order(rep) if s in a.sides):
            out = runs / f"{side}-{seed}"
            if side == "retort":
                spec = {"threads": a.threads, "out": str(out), "overrides": retort_overrides(a, str(student), str(out), rep)}
            else:
                spec = {"threads": a.threads, "student": str(student), "n_prompts": a.n_prompts, "seed": rep,
                        "config": trl_config_kwargs(a, str(out), rep)}
            r = run_child(side, spec, a.threads, runs / f"{side}-{seed}.log")
            results["runs"][seed][side] = r
            results["order"][seed].append(side)
            print(f"  seed {seed} {side}: {r['steps']} steps, {r['steps_per_s']:.3f} steps/s, reward "
                  f"{r['reward'][0]:.3f} -> {r['reward'][-1]:.3f}", flush=True)
    import transformers

    results["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    if "trl" in a.sides:
        results["versions"]["trl"] = trl.__version__
    summarise(results)
    for v in results["verdicts"]:
        print(f"{v['claim']}: {v['verdict']} ({' / '.join(f'{x:.3g}' for x in v['a'])} vs "
              f"{' / '.join(f'{x:.3g}' for x in v['b'])})")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

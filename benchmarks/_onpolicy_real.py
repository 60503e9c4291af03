"""`benchmarks/onpolicy.py --real PAIR`: on-policy distillation at real size, retort `gkd` against TRL
(issue 29 item 2), arms alternating in order, `--reps` repetitions, mean +- standard error.

    python benchmarks/onpolicy.py --real smollm2 [--steps 10] [--batch 4] [--max-new-tokens 128] [--reps 3]
    python benchmarks/onpolicy.py --real qwen-smollm2 ...   # cross-tokenizer: TRL's GOLDTrainer

Pairs (`REAL`): `smollm2` = teacher the packaged SmolLM2-135M-Instruct, student a 10-layer copy of it
pruned by retort itself (`student.keep_layers=10`, `prune=block`); `qwen-smollm2` = teacher the
packaged Qwen2.5-Coder-0.5B-Instruct, the same pruned student (49k vs 151k vocabularies: retort's
`method_args.cross_tokenizer=hybrid` against GOLD's `uld_use_hybrid_loss`). Both models are
de-quantised from their GGUF files once by retort's loader and saved as fp32 HF directories under
`--work` (`prepare`): both sides then load the very same weights from disk.

Prompts: reasoning-gym's `basic_arithmetic` (`TASK` below), `task.examples("train", n_prompts, seed)`
through the tokenizer's chat template on both sides (TRL gets the same system + user messages as a
conversational `prompt` column; every prompt's ids are compared with retort's `encode_prompt`, and
the run stops if one differs). `data.source=answers`: at lmbda=1 the answers are never trained on.

Matched as in `onpolicy.py` (one completion per prompt, `batch` prompts a step, no accumulation,
temperature 1, top_p 1, no top-k, fused AdamW, clip 1.0, constant lr, fp32, `--threads`).
Per repetition r the seed is `seed + r` on both sides and the side that runs first alternates.

Loss: sampling differs between the sides (each its own RNG and engine), so trajectories are not
comparable token for token. What is compared: (1) `loss_parity_real`: TRL's `_chunked_divergence_loss`
and retort's `fused_linear_divergence` on the real student's and teacher's last hidden states and heads
over identical sequences (the first batch's prompts + the task's answers): float32, tolerance 1e-4
relative; (2) the trajectories' means (steps 2..N, the same steps that are timed) per side, mean +- se
over repetitions: within 3 combined standard errors or 10% (`loss_check`).

With the cross-tokenizer pair TRL's GOLDTrainer runs on CPU (tried: 2 steps at 16 new tokens; it
logs no completion lengths, and its loss -- `matched_loss` + `unmatched_loss`, weighted its own way --
is not retort's hybrid kd, so no trajectory check is made there and no tokenisation check: GOLD
tokenises the conversation through its own collator).

Arms: `retort` (matched: fp32 everywhere), `retort-bf16` (`ARMS`: rollouts from a bf16 copy of the
student, and for the same-tokenizer pair the teacher in bf16; the student, its loss and optimizer fp32),
`trl`.

Memory: each side's peak RSS (`ru_maxrss`) minus its RSS after its imports (torch + transformers for
retort; trl, datasets, transformers for TRL), before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STUDENT_PKG = "smollm2-135m-instruct"
REAL = {
    "smollm2": {"teacher": "smollm2-135m-instruct", "student": STUDENT_PKG, "keep_layers": 10, "cross": False,
                "trl": "DistillationTrainer"},
    "qwen-smollm2": {"teacher": "qwen2.5-coder-0.5b-instruct", "student": STUDENT_PKG, "keep_layers": 10,
                     "cross": True, "trl": "experimental.gold.GOLDTrainer"},
}
# two one-digit terms (README's real demo); the answer format the instruct models follow
TASK = ["task.name=rg:basic_arithmetic", "task.difficulty.min_terms=2", "task.difficulty.max_terms=2",
        "task.difficulty.min_digits=1", "task.difficulty.max_digits=1"]


def defaults(a) -> None:
    """Real-mode defaults for the flags left at the built-in benchmark's."""
    for key, built_in, real in [("steps", 40, 10), ("batch", 32, 4), ("max_new_tokens", 96, 128),
                                ("n_prompts", 4000, 200), ("lr", 5e-4, 1e-5), ("threads", 2, 2)]:
        if getattr(a, key) == built_in:
            setattr(a, key, real)


def model_dirs(a, work: Path) -> dict:
    pair = REAL[a.real]
    return {"teacher": str(work / f"hf-{pair['teacher']}"),
            "student": str(work / f"hf-{pair['student']}-{pair['keep_layers']}layers")}


# --------------------------------------------------------------------------- the two commands


# the retort arms: as matched (fp32 everywhere), and with the two precision trades of the fix for the
# biggest costs the profile found (rollout decode, then the teacher's forward): sampling from a bf16 copy
# of the student (`method_args.rollout_dtype`) and the teacher held in bf16; student, loss and
# optimizer stay fp32. With the cross-tokenizer pair the teacher stays fp32: its bf16 copy made the
# smoke run's step slower (13 s -> 32 s for the first step, one timed step) and its peak no lower
ARMS = {"retort": [], "retort-bf16": ["method_args.rollout_dtype=bfloat16", "teacher.dtype=bfloat16"]}
ARMS_CROSS = {"retort": [], "retort-bf16": ["method_args.rollout_dtype=bfloat16"]}
SIDES = ("retort", "retort-bf16", "trl")


def retort_overrides(a, seed: int, student: str, teacher: str, out: str, arm: str = "retort") -> list[str]:
    pair = REAL[a.real]
    method = ["method=gkd", "method_args.lmbda=1.0", f"method_args.temperature={a.temperature}",
              f"method_args.max_new_tokens={a.max_new_tokens}", "method_args.top_p=1.0", "data.source=answers"]
    if pair["cross"]:  # GOLD's hybrid: forward KL on the shared tokens, ULD on the rest
        method += ["method_args.cross_tokenizer=hybrid", "method_args.divergence=forward_kl"]
    else:
        method += ["method_args.divergence=jsd", f"method_args.beta={a.beta}"]
    if a.temperature != 1.0:
        method.append("method_args.t_squared=false")
    return method + TASK + [
        f"student.name={student}", f"teacher.name={teacher}", f"out={out}", f"data.n_train={a.n_prompts}",
        f"data.max_len={a.max_new_tokens + 256}", f"train.batch_size={a.batch}", "train.grad_accum=1",
        f"train.steps={a.steps}", f"train.lr={a.lr}", "train.warmup_steps=0", "train.min_lr_ratio=1.0",
        "train.weight_decay=0.01", "train.beta1=0.9", "train.beta2=0.99", "train.clip_grad=1.0",
        "train.precision=fp32", "train.log_every=1", "train.save_every=0", "train.eval_every=0",
        "eval.n=1", "eval.batch_size=1", "eval.max_new_tokens=8", f"seed={seed}",
        *(ARMS_CROSS if pair["cross"] else ARMS)[arm]]


def trl_config_kwargs(a, seed: int, out: str, teacher: str) -> dict:
    kw = {
        "output_dir": out, "max_steps": a.steps, "per_device_train_batch_size": a.batch, "gradient_accumulation_steps": 1,
        "learning_rate": a.lr, "lr_scheduler_type": "constant", "warmup_steps": 0, "optim": "adamw_torch_fused",
        "weight_decay": 0.01, "adam_beta1": 0.9, "adam_beta2": 0.99, "adam_epsilon": 1e-8, "max_grad_norm": 1.0,
        "temperature": a.temperature, "top_p": 1.0, "top_k": 0, "max_completion_length": a.max_new_tokens, "use_vllm": False,
        "use_cpu": True, "bf16": False, "fp16": False, "gradient_checkpointing": False, "seed": seed, "logging_steps": 1,
        "report_to": "none", "save_strategy": "no", "disable_tqdm": True, "dataloader_num_workers": 0, "log_completions": False}
    if REAL[a.real]["cross"]:
        kw.update(lmbda=1.0, beta=0.0, use_uld_loss=True, uld_use_hybrid_loss=True,
                  teacher_tokenizer_name_or_path=teacher, uld_crossentropy_weight=0.0, uld_distillation_weight=1.0)
    else:
        kw.update(beta=a.beta, min_p=None, repetition_penalty=1.0, shuffle_dataset=True)
    return kw


# --------------------------------------------------------------------------- children


def _task_prompts(a, seed: int):
    from retort.config import load_config
    from retort.lm.config import TrainRun
    from retort.lm.tasks import get_task

    run = load_config(TrainRun, None, TASK + [f"data.n_train={a.n_prompts}", f"seed={seed}"])
    task = get_task(run.task)
    return task.examples("train", a.n_prompts, seed)


def _messages(prompt) -> list[dict]:
    """The turns retort's `encode_prompt` gives the chat template (its system turn, then the user's)."""
    system = getattr(prompt, "system", None)
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": str(prompt)}]


def child_prepare(spec: dict) -> dict:
    """Save the pair's teacher and pruned student as fp32 HF directories (once; kept under --work)."""
    from onpolicy import _setup_child

    _setup_child(spec["threads"])
    from retort.lm.config import ModelConfig
    from retort.lm.models import load_model

    out = {}
    for label, (name, keep, where) in spec["models"].items():
        d = Path(where)
        if not (d / "config.json").is_file():
            t0 = time.time()
            model, tok = load_model(ModelConfig(name=name, keep_layers=keep, dtype="float32"))
            tmp = d.with_name(d.name + ".partial")
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            tmp.rename(d)
            out[label] = {"made_s": time.time() - t0}
        cfg = json.loads((d / "config.json").read_text())
        out[label] = {**out.get(label, {}), "dir": str(d), "from": name, "layers": cfg.get("num_hidden_layers"),
                      "kept_layers": cfg.get("retort_kept_layers"), "model_type": cfg.get("model_type")}
    return out


def child_retort(spec: dict) -> dict:
    from onpolicy import _peak_rss, _rate, _rss_now, _setup_child

    _setup_child(spec["threads"])
    import transformers  # noqa: F401  (the post-import baseline includes what loading a model needs)
    from transformers import AutoModelForCausalLM  # noqa: F401

    from retort.cli import main as retort_main

    rss_start = _rss_now()
    t0 = time.time()
    rc = retort_main(["train", *spec["overrides"]])
    wall = time.time() - t0
    peak = _peak_rss()
    if rc:
        raise SystemExit(f"retort train exited with status {rc}")
    rows = [json.loads(line) for line in (Path(spec["out"]) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    lengths = [r["rollout_tokens"] for r in rows if "rollout_tokens" in r]
    return {"side": spec.get("arm", "retort"), "steps": rows[-1]["step"], "peak_rss_bytes": peak, "rss_at_start_bytes": rss_start,
            "peak_above_start_bytes": peak - rss_start, "wall_s": wall, **_rate([r["time"] for r in rows]),
            "loss": [r["loss"] for r in rows], "completion_tokens": lengths,
            "completion_tokens_mean": sum(lengths) / len(lengths) if lengths else None,
            "metrics_last": {k: v for k, v in rows[-1].items() if k not in ("step", "loss", "time")}}


def _parity_real(student, teacher, tok, prompts, answers, beta: float, temperature: float) -> dict:
    """TRL's chunked JSD vs retort's fused one on the real models' hidden states over identical
    sequences (prompt + the task's answer + EOS, completion positions only), loss and head gradient."""
    import torch
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    from retort.lm.data.collate import encode_prompt
    from retort.losses.fused import fused_linear_divergence

    seqs, starts = [], []
    for p, ans in zip(prompts, answers):
        ids = encode_prompt(tok, p)
        starts.append(len(ids))
        seqs.append(ids + tok(str(ans), add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id or 0] * (width - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    # position t predicts token t+1: the completion's tokens are predicted from starts-1 .. len-2
    mask = torch.zeros(len(seqs), width - 1, dtype=torch.long)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        mask[i, st - 1:len(s) - 1] = 1
    with torch.no_grad():
        t_hs = teacher.model(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]
    hs = student.model(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]
    w = student.get_output_embeddings().weight
    t_w = teacher.get_output_embeddings().weight
    trl_loss = _chunked_divergence_loss(hs, t_hs, w, t_w, mask, beta, temperature=temperature)[0]
    g_trl = torch.autograd.grad(trl_loss, w, retain_graph=True)[0]
    labels = torch.where(mask.bool(), 0, -100).reshape(-1)
    ours = fused_linear_divergence(hs.reshape(-1, hs.shape[-1]), w, labels, teacher_hidden=t_hs.reshape(-1, t_hs.shape[-1]),
                                   teacher_weight=t_w, divergence="jsd", beta=beta,
                                   temperature=temperature)[0] / mask.sum()
    g_ours = torch.autograd.grad(ours, w)[0]
    return {"sequences": len(seqs), "completion_tokens": int(mask.sum()), "trl": trl_loss.item(),
            "retort": ours.item(), "rel_diff": abs(trl_loss.item() - ours.item()) / max(abs(trl_loss.item()), 1e-12),
            "head_grad_max_abs_diff": float((g_trl - g_ours).abs().max()),
            "head_grad_max_abs": float(g_trl.abs().max()), "tolerance_rel": 1e-4}


def child_trl(spec: dict) -> dict:
    from _child import step_timer
    from onpolicy import _peak_rss, _rate, _rss_now, _setup_child

    _setup_child(spec["threads"])
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retort.lm.data.collate import encode_prompt

    rss_start = _rss_now()
    a = argparse.Namespace(**spec["args"])
    cross = REAL[a.real]["cross"]
    examples = _task_prompts(a, spec["seed"])
    prompts = [e.prompt for e in examples]
    tok = AutoTokenizer.from_pretrained(spec["student"])
    student = AutoModelForCausalLM.from_pretrained(spec["student"], dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], dtype=torch.float32)


    timer = step_timer()
    t0 = time.time()
    if cross:
        from trl.experimental.gold import GOLDConfig, GOLDTrainer

        dataset = Dataset.from_dict({"messages": [_messages(p) + [{"role": "assistant", "content": str(e.answer)}]
                                                  for p, e in zip(prompts, examples)]})
        trainer = GOLDTrainer(model=student, teacher_model=teacher, args=GOLDConfig(**spec["config"]),
                              train_dataset=dataset, processing_class=tok, callbacks=[timer])
        parity, loss_check = {"checked": False, "why": "GOLD tokenises prompt + completion through its collator"}, None
    else:
        dataset = Dataset.from_dict({"prompt": [_messages(p) for p in prompts]})
        trainer = trl.DistillationTrainer(model=student, teacher_model=teacher, args=trl.DistillationConfig(**spec["config"]),
                                          train_dataset=dataset, processing_class=tok, callbacks=[timer])
        trl_ids, _, _ = trainer._tokenize_prompts([_messages(p) for p in prompts])
        retort_ids = [encode_prompt(tok, p) for p in prompts]
        bad = [i for i, (x, y) in enumerate(zip(trl_ids, retort_ids)) if list(x) != list(y)]
        if bad:
            i = bad[0]
            raise SystemExit(f"prompt tokenisation differs on {len(bad)}/{len(prompts)} prompts, e.g. {prompts[i]!r}: "
                             f"TRL {list(trl_ids[i])} vs retort {retort_ids[i]}")
        parity = {"prompts_checked": len(prompts), "identical": True, "chat_template": bool(tok.chat_template),
                  "example": {"prompt": str(prompts[0]), "ids_len": len(retort_ids[0])}}
        loss_check = _parity_real(student, teacher, tok, prompts[:a.batch], [e.answer for e in examples[:a.batch]],
                                  a.beta, a.temperature) if spec.get("parity") else None
        student.zero_grad(set_to_none=True)
    trainer.train()
    wall = time.time() - t0
    peak = _peak_rss()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    lengths = [h["completions/mean_length"] - (1 - h.get("completions/clipped_ratio", 0.0)) for h in logs
               if "completions/mean_length" in h]
    return {"side": "trl", "trainer": REAL[a.real]["trl"], "trl_version": trl.__version__,
            "steps": trainer.state.global_step, "peak_rss_bytes": peak, "rss_at_start_bytes": rss_start,
            "peak_above_start_bytes": peak - rss_start, "wall_s": wall,
            **_rate([t - timer.begin for t in timer.times]), "loss": [h["loss"] for h in logs],
            "completion_tokens": lengths, "completion_tokens_mean": sum(lengths) / len(lengths) if lengths else None,
            "metrics_last": {k: v for k, v in logs[-1].items() if k not in ("loss", "step")} if logs else {},
            "tokenisation": parity, "loss_parity_real": loss_check}


CHILDREN = {"real-prepare": child_prepare, "real-retort": child_retort, "real-retort-bf16": child_retort,
            "real-trl": child_trl}


# --------------------------------------------------------------------------- summary


def mean_se(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    n = len(xs)
    if not n:
        return {"n": 0, "mean": None, "se": None}
    m = sum(xs) / n
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n) if n > 1 else None
    return {"n": n, "mean": m, "se": se}


def summarise(reps: list[dict], cross: bool = False) -> dict:
    """Per side: steps/s, peak above start, loss-trajectory mean (timed steps), mean +- se over reps;
    the ratios retort / TRL of the means (and per rep)."""
    out = {}
    for side in SIDES:
        rs = [r[side] for r in reps if side in r]
        if not rs:
            continue
        out[side] = {"steps_per_s": mean_se([r["steps_per_s"] for r in rs]),
                     "peak_above_start_mib": mean_se([r["peak_above_start_bytes"] / 2**20 for r in rs]),
                     "peak_rss_mib": mean_se([r["peak_rss_bytes"] / 2**20 for r in rs]),
                     "loss_first": mean_se([r["loss"][0] for r in rs]),
                     "loss_mean_timed": mean_se([sum(r["loss"][1:]) / max(1, len(r["loss"]) - 1) for r in rs]),
                     "completion_tokens": mean_se([r["completion_tokens_mean"] for r in rs])}
    for arm in ARMS:
        if arm not in out or "trl" not in out:
            continue
        r, t = out[arm], out["trl"]
        both = [x for x in reps if arm in x and "trl" in x]
        lr, lt = r["loss_mean_timed"], t["loss_mean_timed"]
        se = math.sqrt((lr["se"] or 0) ** 2 + (lt["se"] or 0) ** 2)
        diff = abs(lr["mean"] - lt["mean"])
        out[f"ratios_{arm}"] = {
            "steps_per_s_over_trl": r["steps_per_s"]["mean"] / t["steps_per_s"]["mean"],
            "steps_per_s_ratio_per_rep": [x[arm]["steps_per_s"] / x["trl"]["steps_per_s"] for x in both],
            "peak_above_start_over_trl": r["peak_above_start_mib"]["mean"] / t["peak_above_start_mib"]["mean"],
            "targets": {"steps_per_s": ">= 2", "peak_above_start": "<= 0.5"}}
        if cross:  # GOLD's loss weighs its matched / unmatched parts its own way: another number
            out[f"loss_check_{arm}"] = {"comparable": False, "why": "GOLD's hybrid ULD loss (matched_loss, "
                                        "unmatched_loss in its logs) is not retort's hybrid kd; values differ by design"}
            continue
        out[f"loss_check_{arm}"] = {"mean_diff": diff, "combined_se": se,
                                    "rel_diff": diff / max(abs(lt["mean"]), 1e-12),
                                    "within": bool(diff <= 3 * se or diff <= 0.1 * abs(lt["mean"])),
                                    "tolerance": "trajectory means (timed steps) within 3 combined se or 10%"}
    return out


def run(a, run_child) -> None:
    """The real-size benchmark: prepare the models, then `--reps` x (retort, TRL) alternating."""
    defaults(a)
    pair = REAL[a.real]
    work = Path(a.work) / f"real-{a.real}"
    work.mkdir(parents=True, exist_ok=True)
    dirs = model_dirs(a, Path(a.work))
    command = " ".join(["python", "benchmarks/onpolicy.py", *sys.argv[1:]])
    print(f"prepare: {pair['teacher']} -> {dirs['teacher']}; {pair['student']} "
          f"(keep_layers={pair['keep_layers']}) -> {dirs['student']}", flush=True)
    prepared = run_child("real-prepare", {"threads": a.threads, "models": {
        "teacher": [pair["teacher"], 0, dirs["teacher"]],
        "student": [pair["student"], pair["keep_layers"], dirs["student"]]}}, a.threads, work / "prepare.log")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = work / f"run-{stamp}"
    runs.mkdir(parents=True)
    reps: list[dict] = []
    out_file = Path(a.out if a.out_given else ROOT / "benchmarks" / "results" / f"onpolicy_real_{a.real}.json")
    for rep in range(a.reps):
        seed = a.seed + rep
        sides = list(a.sides) if a.sides != ["retort", "trl"] else list(SIDES)  # the built-in default: all arms
        order = sides if rep % 2 == 0 else sides[::-1]
        reps.append({"seed": seed, "order": order})
        for side in order:
            out = runs / f"rep{rep}-{side}"
            if side in ARMS:
                spec = {"threads": a.threads, "out": str(out), "arm": side,
                        "overrides": retort_overrides(a, seed, dirs["student"], dirs["teacher"], str(out), side)}
            else:
                spec = {"threads": a.threads, "out": str(out), "student": dirs["student"], "teacher": dirs["teacher"],
                        "args": {k: v for k, v in vars(a).items() if k != "child"}, "seed": seed,
                        "parity": rep == 0, "config": trl_config_kwargs(a, seed, str(out), dirs["teacher"])}
            try:
                r = run_child(f"real-{side}", spec, a.threads, runs / f"rep{rep}-{side}.log")
            except SystemExit as e:  # recorded, not fatal: e.g. GOLD on CPU
                r = {"side": side, "error": str(e)}
                print(f"  rep {rep} {side}: FAILED\n{e}", flush=True)
            reps[-1][side] = r
            if "error" not in r:
                print(f"  rep {rep} {side}: {r['steps']} steps, {r['steps_per_s']:.4f} steps/s, peak above start "
                      f"{r['peak_above_start_bytes'] / 2**20:.0f} MiB, loss {r['loss'][0]:.4f} -> {r['loss'][-1]:.4f}, "
                      f"{r['completion_tokens_mean']} tokens/completion", flush=True)
        ok = [{k: v for k, v in x.items() if not isinstance(v, dict) or "error" not in v} for x in reps]
        summary = summarise(ok, pair["cross"])
        import torch
        import transformers

        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        try:
            import trl

            versions["trl"] = trl.__version__
        except ImportError:
            pass
        out_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_file.with_suffix(".json.partial")
        tmp.write_text(json.dumps({
            "command": command, "settings": {k: v for k, v in vars(a).items() if k != "child"},
            "pair": pair, "task": TASK, "cores": os.cpu_count(), "versions": versions, "prepared": prepared,
            "retort_commands": {arm: "python -m retort.cli train " + " ".join(
                retort_overrides(a, a.seed, "STUDENT_DIR", "TEACHER_DIR", "RUN", arm)) for arm in ARMS},
            "trl_config": trl_config_kwargs(a, a.seed, "RUN", "TEACHER_DIR"),
            "reps": reps, "summary": summary, "complete": rep == a.reps - 1}, indent=2, default=str))
        tmp.replace(out_file)
    print(json.dumps(summary, indent=1, default=str))
    print(f"wrote {out_file}")

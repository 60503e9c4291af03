"""The built-in teacher: the `teacher` preset trained with `sft` on a built-in task's worked
solutions until it answers >= 95% of test problems, then cached for every later run.

The cache is an ordinary run directory ($RETORT_CACHE or ~/.cache/retort/teacher-TASK): a crash
mid-training resumes from its last checkpoint, and `model/` loads with plain transformers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import load_config

from .config import EvalConfig, TrainRun
from ..errors import RetortError
from .models import builtin_teacher_dir, load_model

TARGET_ACCURACY = 0.95

TEACHER_DEFAULTS = {
    "out": "",  # filled with the cache directory of the task
    "student": {"name": "preset:teacher"},
    "data": {"source": "solutions", "n_train": 64000, "max_len": 160},
    "train": {"steps": 1500, "batch_size": 32, "lr": 1e-3, "warmup_steps": 50, "eval_every": 100,
              "save_every": 100, "stop_at_accuracy": 0.98, "log_every": 20, "keep_checkpoints": 1},
    "eval": {"n": 200, "max_new_tokens": 96},
}
# The final check uses other test problems than the early-stopping checks.
FINAL_EVAL = EvalConfig(n=1000, seed=0, max_new_tokens=96, batch_size=200)


# A task with skill examples (detours: rewriting its traces to a budget) teaches them beside its
# solutions: half the rows, longer rows (a trace inside the prompt), a fixed number of steps (the
# accuracy that stops early measures solving alone), and room for the longer solutions.
SKILLED_DEFAULTS = {"data": {"skills": 0.5, "max_len": 320},
                    "train": {"steps": 3000, "stop_at_accuracy": 0.0, "eval_every": 500, "save_every": 500},
                    "eval": {"max_new_tokens": 192}}


def teacher_config(config_file=None, overrides=None) -> TrainRun:
    from .tasks import get_task

    run = load_config(TrainRun, config_file, overrides, base=TEACHER_DEFAULTS)
    if get_task(run.task).skill_examples(1):
        base = {k: {**v, **SKILLED_DEFAULTS.get(k, {})} if isinstance(v, dict) else v
                for k, v in TEACHER_DEFAULTS.items()}
        run = load_config(TrainRun, config_file, overrides, base=base)
    if run.task.answer is None and run.task.name.startswith("rg:"):
        # a built-in teacher is one of retort's small character models: it learns retort's answer
        # format (the A: line), not reasoning-gym's system prompt and tags, which it cannot follow
        run = replace(run, task=replace(run.task, answer="marker"))
    if not run.out:
        run = replace(run, out=str(builtin_teacher_dir(run.task.name)))
    return run


def ensure_teacher(config_file=None, overrides=None, *, force: bool = False, console=None) -> Path:
    """Return the directory of a trained built-in teacher, training it first if needed."""
    from ..train.teacher import ensure_teacher as ensure
    from .eval import evaluate
    from .tasks import get_task

    run = teacher_config(config_file, overrides)
    out = Path(run.out)

    def report(summary: dict, seconds: float) -> dict:
        model, tok = load_model(replace(run.student, name=str(out / "model")))
        task = get_task(run.task)
        result = evaluate(model, tok, task, replace(FINAL_EVAL, max_new_tokens=run.eval.max_new_tokens))
        info = {"accuracy": result["accuracy"], "n": result["n"], "by_difficulty": result["by_difficulty"],
                "steps": summary["steps"], "train_time_s": seconds,
                "params": sum(p.numel() for p in model.parameters())}
        if run.data.skills > 0 and task.rewrite_templates:
            info["rewrite_templates"] = task.rewrite_templates
            info["skills"] = skill_check(model, tok, task, run.eval.max_new_tokens)
        if result["accuracy"] < TARGET_ACCURACY:
            raise RetortError(
                f"teacher reached {result['accuracy']:.3f} test accuracy (< {TARGET_ACCURACY}) after "
                f"{summary['steps']} steps; raise train.steps or rerun with --force. Its run is in {out}"
            )
        return info

    return ensure(run, force=force, console=console, report=report,
                  evaluate=lambda m, t, task: evaluate(m, t, task, run.eval),
                  note=f"stops at {run.train.stop_at_accuracy:.0%} accuracy; resumable",
                  cached=lambda i: f"test accuracy {i['accuracy']:.3f}, trained in {i['train_time_s']:.0f}s",
                  trained=lambda i: f"{i['accuracy']:.3f} accuracy on {i['n']} test problems, "
                                    f"{i['train_time_s']:.0f}s")


def skill_check(model, tok, task, max_new_tokens: int, n: int = 500) -> dict:
    """How well the teacher does its skill prompts on test-split problems (greedy): the share whose
    output is exactly the target, and whose answer is still right."""
    from .rollout.generate import generate

    rows = task.skill_examples(n, seed=0, split="test")
    outs = generate(model, tok, [r.prompt for r in rows], max_new_tokens=max_new_tokens, batch_size=100)
    exact = sum(o[0].text == r.solution for o, r in zip(outs, rows))
    kept = sum(task.verify(o[0].text, r.answer) for o, r in zip(outs, rows))
    return {"n": len(rows), "exact": round(exact / len(rows), 4), "answer_kept": round(kept / len(rows), 4)}

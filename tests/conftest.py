import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own retort cache, so nothing leaks between tests or from the user."""
    monkeypatch.setenv("RETORT_CACHE", str(tmp_path / "cache"))


def free_port() -> int:
    """A TCP port nothing listens on now (a two-process run's rendezvous; a fixed port can still be
    held by an earlier run's socket)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_overrides(out, steps=6, **extra):
    """Overrides for a seconds-long training run of the nano preset."""
    args = {
        "out": str(out), "student.name": "preset:nano", "train.steps": steps, "train.batch_size": 4,
        "train.warmup_steps": 2, "train.log_every": 1, "train.save_every": 0, "data.n_train": 64,
        "eval.n": 8, "eval.max_new_tokens": 12, "eval.batch_size": 8,
    }
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def kill_while_training(cmd, env, run_dir, targets=("step-0000006", "step-0000015")) -> int:
    """Run `cmd` (a `retort train --resume` command line) and SIGKILL it as soon as each checkpoint
    in `targets` appears in `run_dir`; returns how many times it was killed."""
    import signal
    import subprocess
    import time
    from pathlib import Path

    kills = 0
    for target in targets:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (Path(run_dir) / "ckpt" / target).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    return kills


def peaked_teacher(path, seed=123):
    """A random nano model with peaked distributions (every weight x4, so some samples stop), saved
    like any checkpoint: a controlled teacher that is not the student's initialisation. Made once per
    path; returns the path as a string."""
    from pathlib import Path

    from retort.lm.config import ModelConfig
    from retort.lm.models import load_model, save_model

    if not (Path(path) / "config.json").exists():
        model, tok = load_model(ModelConfig(name="preset:nano"), seed=seed)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(4)
        save_model(model, tok, path)
    return str(path)


def lm_method(tmp_path, name, overrides=None, *, student_seed=5, teacher=True, **cfg):
    """An LM method object built as the loop builds it, on a nano student (seed `student_seed`) and,
    with `teacher`, the peaked teacher; returns (method, student, tokenizer)."""
    from retort.config import load_config
    from retort.lm.config import ModelConfig, TrainRun
    from retort.lm.methods import METHODS
    from retort.lm.methods.base import MethodContext
    from retort.lm.models import load_model
    from retort.lm.tasks import get_task
    from retort.lm.teachers import LocalTeacher

    over = {"method": name, **(overrides or {})}
    if teacher:
        over["teacher.name"] = peaked_teacher(tmp_path / "teacher")
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **over))
    student, tok = load_model(ModelConfig(name="preset:nano"), seed=student_seed)
    ctx = MethodContext(run=run, task=get_task(run.task), tokenizer=tok, student=lambda: student,
                        load_teacher=lambda: LocalTeacher("t", *load_model(run.teacher)),
                        load_initial_student=lambda: load_model(ModelConfig(name="preset:nano"), seed=student_seed))
    cls = METHODS[name]
    return cls(ctx, cls.Config(**cfg)), student, tok

"""Optimizers and schedules by name: the factory the loop builds the student's optimizer with, and
the optimizer of every module a method owns (`retort.contract.Owned`).

`OPTIMIZERS` maps `train.optimizer` to a builder `(param_groups, lr, cfg) -> torch.optim.Optimizer`.
A new optimizer (a differentially private one wraps what these return, with the model and the
sampling rate it needs) is one entry here; parameters of dimension >= 2 get `train.weight_decay`,
biases and norms none.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from .schedule import multistep, warmup_cosine


def _fused(params: list) -> dict:
    # torch's fused kernels: one kernel for every parameter instead of a Python loop over them (on
    # a CPU, AdamW takes 1.7 ms instead of ~10-30 ms per step for the 167k-parameter student preset)
    ok = params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": True} if ok else {}


def _adamw(groups, lr, cfg):
    params = [p for g in groups for p in g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), **_fused(params))


def _sgd(groups, lr, cfg):
    params = [p for g in groups for p in g["params"]]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **_fused(params))


OPTIMIZERS: dict[str, Callable] = {"adamw": _adamw, "sgd": _sgd}


def make_optimizer(named_params: Iterable, cfg, *, lr: float | None = None, name: str | None = None):
    """The optimizer `name` (default `cfg.optimizer`) over the trainable ones of `named_params`."""
    trainable = [(n, p) for n, p in named_params if p.requires_grad]
    decay = [p for n, p in trainable if p.dim() >= 2]
    no_decay = [p for n, p in trainable if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return OPTIMIZERS[name or cfg.optimizer]([g for g in groups if g["params"]] or groups[:1], cfg.lr if lr is None
                                             else lr, cfg)


def make_scheduler(optimizer, cfg, kind: str | None = None):
    """`kind` (default `cfg.schedule`): `warmup_cosine` (linear warmup, cosine to `min_lr_ratio`),
    `multistep` (warmup, then x `lr_gamma` at each of `milestones`) or `constant` (the peak lr: after
    `warmup_steps` where the run's own schedule is constant, else from the first step, as for a
    module a method owns beside a decaying student)."""
    kind = kind or getattr(cfg, "schedule", "warmup_cosine")
    if kind == "constant" and getattr(cfg, "schedule", None) == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: multistep(
            s, warmup=cfg.warmup_steps, milestones=[], gamma=1.0))
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if kind == "multistep":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: multistep(
            s, warmup=cfg.warmup_steps, milestones=cfg.milestones, gamma=cfg.lr_gamma))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(
        s, total=cfg.steps, warmup=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio))

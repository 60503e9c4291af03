"""`onpolicy_dmd`: LiveTalk's improved on-policy distillation (Chern et al., arXiv 2512.23576), i.e.
Self Forcing's two stages (Huang et al., arXiv 2506.08009) with LiveTalk's changes, at toy scale: a
bidirectional many-step teacher of whole sequences distilled into a block-causal few-step student
(`CausalDenoiser`: blocks of frames, the previous block as context) that generates autoregressively.

Stage 1, ODE initialisation (the first `ode_steps` steps): the teacher's ODE trajectories are run
once from fixed noise (`ode_pairs` of them, Heun through the student's levels); the student, with
teacher forcing (the context is the trajectory's clean end), regresses each block's end from the
block's trajectory state at a random one of its levels:

    L_ODE = || G(x_{t_i}[block b], t_i, x_0[block b - 1]) - x_0[block b] ||^2

Stage 2, self-rollout DMD (the rest): the student rolls out a whole sequence from noise on its own
outputs (context noise 0); each block stops at a random exit step (stochastic gradient truncation)
and only that step carries gradient; the whole sequence then takes DMD2's distribution-matching
loss against the teacher's (real) score of whole sequences, with a fake score trained on the
student's rollouts at its own rate, `ratio` critic updates per generator update (LiveTalk: 5):

    grad = (mu_fake(x_t) - mu_real(x_t)) / mean|x - mu_real(x_t)|,   L_G = 1/2 ||x - sg(x - grad)||^2

LiveTalk's claims, measurable here (benchmarks/diffuse.py --part seq): an ODE-only student drifts on
rollouts longer than training (exposure bias) and DMD on its own rollouts reduces the drift; an
ODE stage run to convergence gives a better final student than a short one; too small a DMD
learning rate under-uses the DMD window. `ode_steps = train.steps` is the ODE-only student."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import param
from ...contract import STUDENT, LossOut
from ...errors import ConfigError
from ..nets import CausalDenoiser
from ..sampling import ode_states
from .dm import DistributionMatching


class OnPolicyDMD(DistributionMatching):
    name = "onpolicy_dmd"
    paper = ("LiveTalk: Real-Time Multimodal Interactive Video Diffusion via Improved On-Policy Distillation "
             "(Chern et al., arXiv 2512.23576; GAIR-NLP/LiveTalk configs/ode.yaml, configs/dmd.yaml, model/dmd.py, "
             "pipeline/self_forcing_training.py); Self Forcing (Huang et al., arXiv 2506.08009)")
    equation = ("stage 1 (steps < ode_steps): L = ||G(x_{t_i}[b], t_i, x_0[b-1]) - x_0[b]||^2 on the teacher's ODE "
                "trajectories; stage 2: x = rollout of G on its own outputs (random exit step per block), "
                "L_G = 1/2 ||x - sg(x - (mu_fake(x_t) - mu_real(x_t)) / mean|x - mu_real(x_t)|)||^2, "
                "L_fake = lambda(sigma) ||mu_fake(x + sigma n) - x||^2")
    DEFAULT_STUDENT = "causal:128-3"

    @dataclass
    class Config(DistributionMatching.Config):
        ode_steps: int = param(1000, "steps of stage 1 (the ODE initialisation; LiveTalk runs it to convergence); "
                               "then self-rollout DMD for the rest of train.steps; = train.steps: ODE only", lo=0)
        ode_pairs: int = param(4096, "teacher ODE trajectories computed once for stage 1 (from the run's seed)",
                               lo=1)
        ode_substeps: int = param(8, "Heun steps of the teacher between consecutive student levels", lo=1)
        ratio: int = param(5, "critic updates per generator update in stage 2 (LiveTalk: 5)", lo=1)

    @classmethod
    def check_task(cls, cfg, task) -> None:
        if task.kind != "sequence":
            raise ConfigError(f"method=onpolicy_dmd distils into a block-causal generator of sequences; {task.name} "
                              "is not a sequence (use task.name=ring-seq)")

    @classmethod
    def default_student(cls, cfg, task):
        return cls.DEFAULT_STUDENT  # the teacher's own network is bidirectional

    @classmethod
    def prepare_student(cls, model, cfg, task, seed: int):
        if not isinstance(model, CausalDenoiser):
            raise ConfigError(f"method=onpolicy_dmd trains a block-causal student; student.name gives a "
                              f"{type(model).__name__} (use causal:WIDTH-DEPTH, e.g. {cls.DEFAULT_STUDENT})")
        return model

    def __init__(self, ctx, cfg):
        if cfg.reg_weight > 0:
            raise ConfigError("method=onpolicy_dmd: method_args.reg_weight is DMD's regression of one-shot samples; "
                              "its regression stage here is the ODE initialisation (method_args.ode_steps)")
        super().__init__(ctx, cfg)
        self._ode = None

    # ------------------------------------------------------------------ stage 1: the ODE initialisation
    def ode_pairs(self):
        """(per level: the trajectories' states (P, D), the clean ends (P, D)), from the run's seed."""
        if self._ode is None:
            g = torch.Generator().manual_seed(self.ctx.run.seed + 77)
            z = torch.randn(self.cfg.ode_pairs, *self.ctx.data.shape, generator=g).to(self.ctx.device)
            states, end = ode_states(self.teacher(), z, self.ctx.student_sigmas, self.cfg.ode_substeps)
            self._ode = ([s.float().cpu() for s in states], end.float().cpu())
            self.ctx.log(f"onpolicy_dmd: {self.cfg.ode_pairs} teacher ODE trajectories through "
                         f"{len(states)} level(s) for the ODE initialisation")
        return self._ode

    def ode_loss(self, model, batch):
        states, end = self.ode_pairs()
        gen = self.rng(batch, 4)
        n, dev = len(batch["z"]), self.ctx.device
        idx = torch.randint(0, len(end), (n,), generator=gen)
        level = torch.randint(0, len(states), (n,), generator=gen)
        x_t = torch.stack(states)[level, idx]                             # (n, D)
        x0 = end[idx]
        student = self.student()  # the module itself, for its shape (`model` may be wrapped)
        w = student.frame_dim * student.block
        blocks = x0.shape[1] // w
        sig = torch.tensor([float(s) for s in self.ctx.student_sigmas])[level]
        # every block of every sequence at once, the context the clean end of the block before
        xb = x_t.reshape(n, blocks, w).reshape(n * blocks, w).to(dev)
        target = x0.reshape(n * blocks, w).to(dev)
        ctx = torch.cat([torch.zeros(n, 1, w), x0.reshape(n, blocks, w)[:, :-1]], 1).reshape(n * blocks, w).to(dev)
        first = (torch.arange(n * blocks) % blocks == 0).to(dev)
        pred = torch.empty_like(target)
        s = sig.repeat_interleave(blocks).to(dev)
        pred[first] = model(xb[first], s[first], None)
        pred[~first] = model(xb[~first], s[~first], ctx[~first])
        loss = ((pred - target) ** 2).reshape(n, -1).mean(1).sum()
        return loss, {"ode": float(loss.detach()) / n}

    # ------------------------------------------------------------------ stage 2: self-rollout DMD
    def generate(self, model, batch: dict, grad: bool = True) -> torch.Tensor:
        sig = self.ctx.student_sigmas
        z = batch["z"].to(self.ctx.device)
        gen = self.rng(batch, 1)
        student = self.student()  # `rollout` is the module's own method (`model` may be wrapped)
        blocks = z.shape[1] // (student.frame_dim * student.block)
        exits = torch.randint(0, len(sig), (blocks,), generator=gen).tolist()
        return student.rollout(z, sig, generator=gen, exits=exits, grad=grad)

    def trains(self, step: int) -> set:
        """Stage 1 the student alone; stage 2 DMD2's rule, counted from the stage's first step."""
        return {STUDENT} if step < self.cfg.ode_steps else super().trains(step - self.cfg.ode_steps)

    def loss(self, model, batch) -> LossOut:
        if self.step < self.cfg.ode_steps:
            loss, metrics = self.ode_loss(model, batch)
            return LossOut(loss, len(batch["z"]), metrics)
        return super().loss(model, batch)

"""`msd`: Multi-Student Distillation (Song, Lorraine, Nie, Kreis, Lucas; arXiv 2410.23274, ICML
2025): one conditional teacher distilled into K one-step students, each owning a partition of the
classes (ImageNet's: consecutive class ranges), each trained by DMD2's distribution matching on its
classes only with its own fake score. At inference a label is routed to its student: still 1 NFE, K
times the parameters in all.

Here the K students and the K fake scores are each one `Routed` module (a batch is split by label),
so the loop, checkpoints and resume are DMD2's. Students start as copies of the teacher network
(`student.name=teacher`, the paper's same-size students) or fresh (`student.name=mlp:W-D`, the
smaller students; the paper's TSM initialisation is not implemented: they start untrained)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ...config import param
from ...contract import Owned
from ...errors import ConfigError
from ..nets import Routed
from .dm import DistributionMatching, FakeScore


def partition(n_classes: int, k: int, how: str, seed: int = 0) -> list[int]:
    """groups[c] = the student of class c: consecutive ranges (the paper's ImageNet split) or a
    seeded random balanced assignment."""
    if not 1 <= k <= n_classes:
        raise ConfigError(f"method_args.students={k}: expected 1 .. {n_classes} (the classes)")
    base = [c * k // n_classes for c in range(n_classes)]
    if how == "consecutive":
        return base
    g = torch.Generator().manual_seed(seed)
    return [base[i] for i in torch.randperm(n_classes, generator=g).tolist()]


class MSD(DistributionMatching):
    name = "msd"
    paper = ("Multi-Student Diffusion Distillation for Better One-step Generators (Song et al., arXiv 2410.23274, "
             "ICML 2025); each student trained with DMD2's distribution matching (tianweiy/DMD2)")
    equation = "student k = F(c): L_k = DMD2's L_G and L_fake on the conditions c with F(c) = k, each with its own mu_fake"

    @dataclass
    class Config(DistributionMatching.Config):
        students: int = param(2, "K, the number of students (the paper: 2, 4, 8)", lo=1)
        partition: str = param("consecutive", "how classes are split: consecutive ranges (the paper's) or random "
                               "(balanced, seeded)", choices=["consecutive", "random"])

    @classmethod
    def prepare_student(cls, model, cfg, task, seed: int):
        if not task.n_classes:
            raise ConfigError(f"method=msd splits the classes among students; {task.name} has none (use classes, "
                              "digits or mnist)")
        if isinstance(model, Routed):  # resumed from a checkpoint
            return model
        groups = partition(task.n_classes, cfg.students, cfg.partition, seed)
        models = [model] + [copy.deepcopy(model) for _ in range(cfg.students - 1)]
        return Routed(models, groups)

    def owned(self) -> dict:
        student = self.student()
        groups = student.groups.tolist() if student is not None else partition(
            self.ctx.data.n_classes, self.cfg.students, self.cfg.partition, self.ctx.run.seed)
        fakes = Routed([self.ctx.teacher_net() for _ in range(self.cfg.students)], groups)
        return {"fake": Owned(FakeScore(fakes, gan=self.cfg.gan_weight > 0), lr=self.cfg.fake_lr or None,
                              schedule="constant")}

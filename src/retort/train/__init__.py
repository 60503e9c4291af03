"""The one training loop, its checkpoints, the weight average, optimizers, and the built-in teacher
cache every track's `retort teacher` uses."""

from .loop import NonFiniteLoss, train
from .teacher import cached_teacher

__all__ = ["NonFiniteLoss", "cached_teacher", "train"]

"""The training loop and its checkpoints."""

from .loop import NonFiniteLoss, cached_teacher, train

__all__ = ["NonFiniteLoss", "cached_teacher", "train"]

"""The training loop and its checkpoints."""

from .loop import NonFiniteLoss, train

__all__ = ["NonFiniteLoss", "train"]

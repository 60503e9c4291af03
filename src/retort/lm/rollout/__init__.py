"""Generation engines shared by traces, on-policy methods and evaluation."""

from .generate import Completion, generate

__all__ = ["Completion", "generate"]

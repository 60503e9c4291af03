"""Training methods by name. Adding one: a file here and one line in METHODS."""

from .base import BatchPlan, LossOut, Method, MethodContext, OffPolicy
from .sft import SFT

METHODS: dict[str, type[Method]] = {SFT.name: SFT}

__all__ = ["BatchPlan", "LossOut", "METHODS", "Method", "MethodContext", "OffPolicy"]

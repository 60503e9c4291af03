"""Training methods by name. Adding one: a file here and one line in METHODS."""

from .base import BatchPlan, LossOut, Method, MethodContext, OffPolicy
from .kd import KD
from .sft import SFT

METHODS: dict[str, type[Method]] = {SFT.name: SFT, KD.name: KD}

__all__ = ["BatchPlan", "LossOut", "METHODS", "Method", "MethodContext", "OffPolicy"]

"""Classifier methods by name (`retort train track=classify method=NAME`)."""

from .base import ClassifyContext, ClassifyMethod
from .ce import CE
from .dkd import DKD
from .kd import KD
from .pld import PLD

METHODS = {m.name: m for m in (CE, KD, DKD, PLD)}

__all__ = ["METHODS", "ClassifyContext", "ClassifyMethod"]

"""Classifier methods by name (`retort train track=classify method=NAME`)."""

from .base import ClassifyContext, ClassifyMethod
from .borup import Borup
from .ce import CE
from .dkd import DKD
from .kd import KD
from .lelp import LELP
from .pld import PLD
from .recursive import Recursive
from .swing import Swing

METHODS = {m.name: m for m in (CE, KD, DKD, PLD, LELP, Borup, Recursive, Swing)}

__all__ = ["METHODS", "ClassifyContext", "ClassifyMethod"]

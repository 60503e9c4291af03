"""Diffusion methods by name (`retort train track=diffuse method=NAME`)."""

from .base import DiffuseContext, DiffuseMethod
from .cd import CD
from .denoise import Denoise
from .dmd import DMD
from .dmd2 import DMD2

METHODS = {m.name: m for m in (Denoise, CD, DMD, DMD2)}

__all__ = ["METHODS", "DiffuseContext", "DiffuseMethod"]

"""Diffusion methods by name (`retort train track=diffuse method=NAME`)."""

from .base import DiffuseContext, DiffuseMethod
from .cd import CD
from .denoise import Denoise
from .dmd import DMD
from .dmd2 import DMD2
from .gdd import GDD
from .msd import MSD
from .onpolicy_dmd import OnPolicyDMD
from .phased_dmd import PhasedDMD
from .uni_instruct import UniInstruct

METHODS = {m.name: m for m in (Denoise, CD, DMD, DMD2, GDD, MSD, OnPolicyDMD, PhasedDMD, UniInstruct)}

__all__ = ["METHODS", "DiffuseContext", "DiffuseMethod"]

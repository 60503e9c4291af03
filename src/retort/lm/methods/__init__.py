"""Training methods by name (`METHODS`). Adding one: a file here and one line in METHODS.

A method file imports no other method file; what methods share lives in modules that are not
methods: `base` (the context, off-policy batching, token log-probs), `examples` (the data's
encoded examples), `onpolicy` (rollouts of the student), `groups` (groups of rollouts and the
clipped policy loss), `distill` (the divergence config, the run's teacher, the losses on given
tokens), `hidden` (last hidden states) and `pairs` (trace pairs).
"""

from .base import BatchPlan, LossOut, Method, MethodContext, OffPolicy, Owned
from .chunk_sft import ChunkSFT
from .curio_sft import CurioSFT
from .dp_opd import DPOPD
from .dpo import DPO, SimPO
from .gkd import GKD
from .grpo import GRPO
from .kd import KD
from .kepo import KEPO
from .opsd import OPSD
from .redi import REDI
from .rkl_pg import RKLPG
from .sft import SFT
from .swing import Swing
from .system15 import System15
from .talking import Talking
from .tsd_kd import TSDKD

METHODS: dict[str, type[Method]] = {m.name: m for m in (SFT, KD, GKD, RKLPG, OPSD, TSDKD, REDI, DPO, SimPO, CurioSFT, ChunkSFT,
                                                                 GRPO, KEPO, Swing, Talking, System15, DPOPD)}

__all__ = ["BatchPlan", "LossOut", "METHODS", "Method", "MethodContext", "OffPolicy", "Owned"]

"""Cross-tokenizer divergences: between a student and a teacher whose vocabularies differ, so their
distributions have no common support to take a KL over.

- `uld`: the Universal Logit Distillation distance (Boizard et al. 2024, "Towards Cross-Tokenizer
  Distillation: the Universal Logit Distillation Loss for LLMs", arXiv:2402.12030). Each
  distribution's probabilities sorted in descending order, the shorter padded with zeros to the
  larger vocabulary, and their L1 distance (the closed form of the Wasserstein-1 distance the paper
  starts from, with a uniform 0/1 cost between tokens):
      ULD_t = sum_i | sort(P_S,t)_i - sort(P_T,t)_i |
  It ignores which token holds which probability: only the shapes of the distributions meet.
  With identical vocabularies it is a lower bound of the L1 distance sum_v |P_S(v) - P_T(v)|
  (= 2 TVD), equal to it when both distributions rank the tokens the same way, and 0 when P_S = P_T.
- `hybrid_uld`: the hybrid of TRL's GOLD trainer (trl/experimental/gold): the tokens both
  vocabularies hold (paired by `shared`, see `retort.lm.data.align.shared_vocab`) are compared
  exactly, with the forward-KL terms over them, and ULD runs over the remaining columns:
      H_t = sum_{(s, v) shared} P_T(v) [log P_T(v) - log P_S(s)]
            + unmatched_weight * ULD(P_S,t[unshared], P_T,t[unshared])
  When every token is shared (identical tokenizers), H_t is exactly KL(P_T,t || P_S,t).
  (GOLD uses a generalized JSD on the shared columns; retort takes the forward KL, the `kd` default,
  so that the identical-tokenizer case is exactly `kd`'s loss.)

Both take log-probabilities (already at the run's temperature) as `student: (N, V_S)` and
`teacher: (N, V_T)`, return per-row values `(N,)` in float32 or wider, and neither masks nor
averages (`retort.losses.reduce` does that).
"""

from __future__ import annotations

import torch


def _up(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def uld(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """ULD_t = sum_i |sort(P_S,t)_i - sort(P_T,t)_i|, both sorted descending, padded to the larger
    vocabulary. `student_logprobs: (N, V_S)`, `teacher_logprobs: (N, V_T)` -> `(N,)`."""
    ps = _up(student_logprobs).exp().sort(dim=-1, descending=True).values
    pt = _up(teacher_logprobs).exp().sort(dim=-1, descending=True).values
    width = max(ps.shape[-1], pt.shape[-1])
    ps = torch.nn.functional.pad(ps, (0, width - ps.shape[-1]))
    pt = torch.nn.functional.pad(pt, (0, width - pt.shape[-1]))
    return (ps - pt).abs().sum(-1)


def hybrid_uld(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, shared: torch.Tensor, *,
               unmatched_weight: float = 1.0) -> torch.Tensor:
    """GOLD's hybrid: forward-KL terms over the shared tokens plus `unmatched_weight` * ULD over the
    rest. `shared: (M, 2)` long, rows of (student id, teacher id) holding the same token.
    `student_logprobs: (N, V_S)`, `teacher_logprobs: (N, V_T)` -> `(N,)`."""
    ls, lt = _up(student_logprobs), _up(teacher_logprobs)
    s_ids, t_ids = shared[:, 0].to(ls.device), shared[:, 1].to(ls.device)
    lt_m = lt[:, t_ids]
    matched = torch.where(lt_m > -float("inf"), lt_m.exp() * (lt_m - ls[:, s_ids]), torch.zeros_like(lt_m)).sum(-1)
    if unmatched_weight == 0:
        return matched
    s_rest = torch.ones(ls.shape[-1], dtype=torch.bool, device=ls.device)
    t_rest = torch.ones(lt.shape[-1], dtype=torch.bool, device=ls.device)
    s_rest[s_ids] = False
    t_rest[t_ids] = False
    if not bool(s_rest.any()) and not bool(t_rest.any()):
        return matched
    return matched + unmatched_weight * uld(ls[:, s_rest], lt[:, t_rest])


CROSS_DIVERGENCES = {"uld": uld, "hybrid": hybrid_uld}

__all__ = ["CROSS_DIVERGENCES", "hybrid_uld", "uld"]

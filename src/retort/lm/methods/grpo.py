"""`grpo`: group-relative policy optimisation with verifiable rewards, as AceReason-Nemotron runs it
after distillation (NVIDIA, arXiv:2505.16400; GRPO: Shao et al. 2024, DeepSeekMath,
arXiv:2402.03300; token-level averaging and clip-higher from DAPO, Yu et al. 2025, arXiv:2503.14476).

For each prompt the student samples G completions; the task's verifier rewards each (partial credit
where the task gives it); advantages are the rewards normalised within their group; the loss is the
clipped importance-ratio surrogate averaged over tokens. AceReason's choices are the defaults:
strictly on-policy (one optimizer step per batch of rollouts), no KL term, no entropy bonus,
token-level averaging, truncated completions masked rather than penalised, and prompts every sample
solves (or none does) filtered out. The frame (sampling, rewards, filter, loss, resume) is
`retort.lm.methods.groups`; its docstring states every rule. No teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

from .groups import GroupConfig, GroupPolicy


class GRPO(GroupPolicy):
    """Groups of the student's own samples, rewarded by the task's verifier (`GroupPolicy`)."""

    name = "grpo"
    paper = ("AceReason-Nemotron (Chen et al. 2025, arXiv:2505.16400); GRPO (Shao et al. 2024, arXiv:2402.03300); "
             "DAPO (Yu et al. 2025, arXiv:2503.14476)")
    equation = ("A_i = (r_i - mean_G r) / (std_G r + 1e-4); L = sum_{i,t} -min(rho A_i, clip(rho, 1-eps, 1+eps_high) "
                "A_i) + beta k3(pi || pi_ref), / kept tokens")

    @dataclass
    class Config(GroupConfig):
        pass

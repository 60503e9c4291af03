"""The pieces of group-relative policy optimisation (GRPO, Shao et al. 2024, arXiv:2402.03300; DAPO,
Yu et al. 2025, arXiv:2503.14476), as pure functions on tensors: group-normalised advantages, the
clipped importance-ratio surrogate per token, and the k3 estimate of the KL to a reference. Nothing
here masks or averages over tokens: the method that uses them reduces (`retort.lm.methods.groups`).

Conventions follow TRL's `GRPOTrainer` (names and numerics: the unbiased group std, the 1e-4 added
to it, the clipped-token counts), so a TRL user reads the same quantities.
"""

from __future__ import annotations

import torch

SCALES = ("group", "batch", "none")


def group_advantages(rewards: torch.Tensor, group: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - mean_{g(i)} r) / (std + eps) for rewards `rewards: (N,)` in consecutive groups of
    `group` samples of one prompt each. `scale`: "group" divides by the (unbiased) std of the sample's
    own group, "batch" by the std of all N rewards, "none" not at all (Dr. GRPO). A group whose
    rewards are all equal has advantage 0 whatever the scale."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if rewards.numel() % group:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group}")
    r = rewards.reshape(-1, group)
    adv = (r - r.mean(1, keepdim=True)).reshape(-1)
    if scale == "none":
        return adv
    if scale == "group":
        std = r.std(1).repeat_interleave(group) if group > 1 else torch.zeros_like(rewards)
    else:
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    return adv / (std + eps)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, *,
                      epsilon_low: float, epsilon_high: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, as a loss:
        rho_t = exp(log pi(y_t) - log pi_old(y_t))
        l_t = -min(rho_t A_t, clip(rho_t, 1 - epsilon_low, 1 + epsilon_high) A_t)
    `logp`, `old_logp`, `advantages`: broadcastable, e.g. (N,) each, or (B, T) with advantages (B, 1).
    Returns (l, low, high): `low` where the ratio is clipped below with A < 0, `high` above with A > 0
    (the tokens whose gradient the clip removes). With old_logp = logp.detach() the ratio is 1 and the
    gradient is -A grad log pi (strictly on-policy)."""
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high)
    loss = -torch.minimum(ratio * advantages, clipped * advantages)
    low = (ratio < 1.0 - epsilon_low) & (advantages < 0)
    high = (ratio > 1.0 + epsilon_high) & (advantages > 0)
    return loss, low, high


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(pi || pi_ref) per sampled token (y_t ~ pi):
    exp(r) - r - 1 with r = log pi_ref(y_t) - log pi(y_t); >= 0, and 0 where the two agree."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


__all__ = ["SCALES", "clipped_surrogate", "group_advantages", "k3_kl"]

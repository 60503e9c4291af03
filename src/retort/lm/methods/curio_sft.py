"""`curio_sft`: entropy-preserving SFT by adaptive self-distillation (CurioSFT, arXiv:2602.02244;
repo HaoooWang/CurioSFT, `custom_verl/recipe/curio_sft`).

SFT on demonstrations, regularised toward the model's own recent copy (the reference) made flatter
per token. Per demonstration token y*_t:
    lp_t     = log p_theta(y*_t | x, y*_<t)
    lp_ref_t = log softmax(z_ref,t / tau_t)[y*_t]
    L_t      = -lp_t + alpha * 0.5 * (lp_t - lp_ref_t)^2         (variant "token", the released code)
    L_t      = -lp_t + alpha * KL(p_theta,t || p_ref^tau_t,t)     (variant "full_kl", the paper's reading)
tau_t (Entropy-Guided Temperature Selection) from the reference's own logits: H_t = entropy of the
softmax over its top-512 logits; target H*_t = H_t + 0.5 sigmoid(2 (H_t - 1.2)); tau_t in
[tau_min, tau_max] = [1.1, 1.5] found by 20 bisection steps so that the top-512 entropy at tau_t is
H*_t (clamped to the bounds); tokens with H_t <= 0.03 get tau_min. Since tau_t > 1, the reference
is less sure than the policy on confident tokens, and the squared log-ratio stops NLL from pushing
p(y*) to 1.

The reference starts as a copy of the policy and is synced every `sync_every` reference forwards:
theta_ref <- (1 - mixup) theta_ref + mixup theta_policy (mixup 0.99). On `--resume` it restarts as a
copy of the resumed policy (at most a few steps from where it was; not bitwise). Logged: `nll`,
`reg`, `tau` (mean), `entropy` (the policy's mean token entropy, the quantity CurioSFT preserves).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ...config import param
from ..data.collate import IGNORE
from .base import LossOut, OffPolicy
from .examples import data_examples
from .hidden import unwrap


def _entropy(logits: torch.Tensor, tau) -> torch.Tensor:
    lp = torch.log_softmax(logits / tau, dim=-1)
    return -(lp.exp() * lp).sum(-1)


@torch.no_grad()
def entropy_guided_tau(ref_logits: torch.Tensor, *, tau_min: float = 1.1, tau_max: float = 1.5, top_k: int = 512,
                       h_floor: float = 0.03, iters: int = 20) -> torch.Tensor:
    """Per-row temperature tau in [tau_min, tau_max] whose top-k entropy is H + 0.5 sigmoid(2 (H - 1.2))."""
    z = ref_logits.float()
    z = z.topk(min(top_k, z.shape[-1]), dim=-1).values
    h = _entropy(z, 1.0)
    target = h + 0.5 * torch.sigmoid(2 * (h - 1.2))
    lo = torch.full_like(h, tau_min)
    hi = torch.full_like(h, tau_max)
    for _ in range(iters):  # entropy rises with tau: bisect
        mid = (lo + hi) / 2
        above = _entropy(z, mid[:, None]) > target
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    tau = (lo + hi) / 2
    tau = torch.where(_entropy(z, torch.full_like(h, tau_max)[:, None]) <= target, torch.full_like(h, tau_max), tau)
    tau = torch.where(_entropy(z, torch.full_like(h, tau_min)[:, None]) >= target, torch.full_like(h, tau_min), tau)
    return torch.where(h <= h_floor, torch.full_like(h, tau_min), tau)


def curio_token_loss(logits, ref_logits, labels, tau, *, alpha: float = 1.0, variant: str = "token"):
    """(summed loss, summed nll, summed regulariser) over rows; logits/ref_logits (N, V), labels (N,), tau (N,)."""
    lp_all = torch.log_softmax(logits.float(), dim=-1)
    lp = lp_all.gather(1, labels[:, None])[:, 0]
    ref_all = torch.log_softmax(ref_logits.float() / tau[:, None], dim=-1)
    if variant == "token":
        reg = 0.5 * (lp - ref_all.gather(1, labels[:, None])[:, 0]) ** 2
    elif variant == "full_kl":
        reg = (lp_all.exp() * (lp_all - ref_all)).sum(-1)
    else:
        raise ValueError(f"variant must be 'token' or 'full_kl', got {variant!r}")
    nll = -lp
    return (nll + alpha * reg).sum(), nll.sum(), reg.sum()


class CurioSFT(OffPolicy):
    """The data of `sft` (`data_examples`) with the loss above and the EMA reference it owns."""

    name = "curio_sft"
    paper = "CurioSFT: entropy-preserving SFT by adaptive self-distillation, arXiv:2602.02244"
    equation = "L_t = -log p(y*_t) + alpha * 0.5 * (log p(y*_t) - log softmax(z_ref/tau_t)[y*_t])^2"

    @dataclass
    class Config:
        alpha: float = param(1.0, "weight of the self-distillation term", lo=0.0)
        variant: str = param("token", "token: squared log-ratio on the data token (released code); full_kl: "
                             "KL(p || p_ref^tau) over the vocabulary", choices=["token", "full_kl"])
        tau_min: float = param(1.1, "lowest per-token reference temperature", lo=0.0, lo_open=True)
        tau_max: float = param(1.5, "highest per-token reference temperature", lo=0.0, lo_open=True)
        top_k: int = param(512, "logits the entropy (and so tau) is computed over", lo=2)
        sync_every: int = param(5, "reference forwards between EMA syncs of the reference", lo=1)
        mixup: float = param(0.99, "EMA weight of the policy at a sync (1: hard copy)", lo=0.0, hi=1.0)

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        if cfg.tau_max < cfg.tau_min:
            from ...errors import ConfigError

            raise ConfigError(f"method_args.tau_max={cfg.tau_max} is below tau_min={cfg.tau_min}")
        self._ref = None
        self._forwards = 0
        self._saved_ref = None  # the reference's weights from a checkpoint, until it is rebuilt

    def examples(self):
        return data_examples(self.ctx)

    def state_dict(self) -> dict:
        """The EMA reference and the forward count that times its syncs: without them a resumed
        run would restart the reference from the current policy."""
        if self._ref is None:
            return {"forwards": self._forwards}
        return {"forwards": self._forwards, **{f"ref.{k}": v for k, v in self._ref.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self._forwards = int(state.get("forwards", 0))
        ref = {k[4:]: v for k, v in state.items() if k.startswith("ref.")}
        self._ref, self._saved_ref = None, ref or None

    @torch.no_grad()
    def reference(self, model):
        policy = unwrap(model)
        if self._ref is None:
            self._ref = copy.deepcopy(policy).eval().requires_grad_(False)
            if self._saved_ref is not None:  # resumed: the reference as the checkpoint left it
                self._ref.load_state_dict(self._saved_ref)
                self._saved_ref = None
            elif self._forwards == 0:
                self._forwards += 1
                return self._ref
        if self._forwards % self.cfg.sync_every == 0:
            for r, p in zip(self._ref.parameters(), policy.parameters()):
                r.lerp_(p.detach().to(r.dtype), self.cfg.mixup)
        self._forwards += 1
        return self._ref

    def private_records(self) -> int:
        from ...errors import ConfigError

        raise ConfigError("privacy.*: method curio_sft cannot train under DP-SGD: its reference model is a copy of "
                          "the student that Opacus's per-sample hooks would also see")

    def loss(self, model, batch) -> LossOut:
        c = self.cfg
        labels = batch["labels"][:, 1:]
        sel = labels != IGNORE
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][sel]
        with torch.no_grad():
            ref = self.reference(model)
            ref_logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][sel]
            tau = entropy_guided_tau(ref_logits, tau_min=c.tau_min, tau_max=c.tau_max, top_k=c.top_k)
        loss, nll, reg = curio_token_loss(logits, ref_logits, labels[sel], tau, alpha=c.alpha, variant=c.variant)
        n = int(sel.sum())
        with torch.no_grad():
            ent = _entropy(logits.detach().float(), 1.0).sum()
        d = max(1, n)
        return LossOut(loss, n, {"nll": float(nll.detach()) / d, "reg": float(reg.detach()) / d,
                                 "tau": float(tau.mean()) if n else 0.0, "entropy": float(ent) / d})

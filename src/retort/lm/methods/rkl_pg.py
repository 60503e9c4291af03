"""`rkl_pg`: on-policy reverse KL as a policy gradient with a dense per-token reward (the
sampled-token estimator of MiniLLM, Gu et al. 2024, arXiv:2306.08543, as used by Thinking
Machines' on-policy distillation / tinker-cookbook and OPSD's `--use_tinker_loss`).

On a completion y sampled from the student, the per-token reward is
    r_t = log p_T(y_t | x, y_<t) - log p_S(y_t | x, y_<t)
(both models' own distributions, temperature 1; `temperature` shapes the rollouts only)
and the advantage its discounted sum over the future, A_t = sum_{t' >= t} gamma^(t'-t) r_t'
(gamma = 0: the per-token, no-future-credit form). The loss is
    L = -sum_t stopgrad(A_t) * log p_S(y_t | x, y_<t)
whose expectation over y ~ p_S is the gradient of the sequence reverse KL KL(p_S || p_T) (for
gamma = 1) at O(1) memory per token: only the sampled tokens' log-probs are needed, so the
teacher may be any model that scores tokens. Logged: `rkl` (mean of log p_S - log p_T on the
sampled tokens, an estimate of the per-token reverse KL) and `advantage` (mean A_t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import param
from ..data.collate import IGNORE
from ...losses.fused import fused_linear_divergence
from .base import LossOut
from .hidden import last_hidden, logprobs_from_hidden, unwrap
from .onpolicy import OnPolicy, RolloutConfig


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """A_t = sum_{t' >= t} gamma^(t'-t) r_t' along dim 1 over positions where mask is true (others
    are 0 and do not break the sum: masked positions only occur before and after a completion)."""
    if gamma == 0.0:
        return rewards * mask
    out = torch.zeros_like(rewards)
    run = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        run = torch.where(mask[:, t], rewards[:, t] + gamma * run, run)
        out[:, t] = torch.where(mask[:, t], run, torch.zeros_like(run))
    return out


def scored_logprobs(teacher, batch) -> torch.Tensor:
    """log p_T of every label token of `batch`, in order, from `teacher.score`."""
    prompts, completions = [], []
    for ids, lab in zip(batch["input_ids"], batch["labels"]):
        pos = (lab != IGNORE).nonzero().squeeze(-1)
        if pos.numel():
            prompts.append(ids[:int(pos[0])].tolist())
            completions.append(lab[pos].tolist())
    scored = teacher.score(prompts, completions)
    return torch.tensor([lp for sc in scored for lp in sc.logprobs], dtype=torch.float32)


class RKLPG(OnPolicy):
    """Rollouts of the student (`OnPolicy`) with a policy-gradient loss whose per-token reward is
    the run's teacher's log-prob minus the student's."""

    name = "rkl_pg"
    paper = ("MiniLLM (Gu et al. 2024, arXiv:2306.08543); Thinking Machines on-policy distillation; "
             "OPSD's tinker loss (arXiv:2601.18734)")
    equation = "A_t = sum_{t'>=t} gamma^(t'-t) (log p_T(y_t') - log p_S(y_t')); L = -sum_t sg(A_t) log p_S(y_t)"

    @dataclass
    class Config(RolloutConfig):
        gamma: float = param(0.0, "discount of future rewards in the advantage (0: per-token reward only)",
                             lo=0.0, hi=1.0)
        chunk: int = param(0, "rows per chunk of the fused loss (0: auto from the vocabulary size)", lo=0)

    def teacher_needs(self) -> tuple:
        return self.with_seq_kd({"hidden"}, {"score"})

    def loss(self, model, batch) -> LossOut:
        c = self.cfg
        teacher = self.teacher(model)
        labels = batch["labels"][:, 1:]
        sel = labels != IGNORE
        if "hidden" in teacher.capabilities:
            with torch.no_grad():
                t_hidden, t_weight = teacher.hidden(batch)
            lp_t = logprobs_from_hidden(t_hidden[:, :-1][sel], t_weight, labels[sel], vocab=self.vocab)
        else:  # a teacher that scores given continuations (a trace store, a server)
            lp_t = scored_logprobs(teacher, batch).to(labels.device)
        # one student forward: its hidden states carry the gradient, and (detached) give log p_S
        hidden = last_hidden(model, batch)[:, :-1][sel]
        head = unwrap(model).get_output_embeddings().weight
        lp_s = logprobs_from_hidden(hidden.detach(), head, labels[sel], vocab=self.vocab)
        rewards = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
        rewards[sel] = lp_t - lp_s
        adv = discounted_returns(rewards, sel, c.gamma)[sel]
        # -sum_t A_t log p_S(y_t) = sum_t A_t CE_t: the fused path's CE term with row weights A_t
        loss, _, _ = fused_linear_divergence(
            hidden, head, labels[sel], kd_weight=0.0, ce_weight=1.0,
            vocab=self.vocab, chunk=c.chunk or None, row_weight=adv)
        n = int(sel.sum())
        metrics = {"rkl": float((lp_s - lp_t).sum()) / max(1, n), "advantage": float(adv.sum()) / max(1, n)}
        metrics.update(batch.get("stats", {}))
        return LossOut(loss, n, metrics)

"""Group rollouts and the clipped group-relative policy loss: the frame `grpo` and `kepo` share
(not a method).

Prompts: those of `data_examples` (each needs its reference answer), in `OffPolicy`'s deterministic,
length-bucketed order. A micro-batch of `train.batch_size` rows is `train.batch_size /
num_generations` prompts, each sampled `num_generations` (G) times by the current student with the
rollout engine (`retort.lm.rollout.generate_ids`: `temperature`, `top_p`, `max_new_tokens`), seeded
from the run seed and the micro-batch index under a forked RNG: `--resume` draws the same rollouts.

Reward: the task's verifier, `task.reward(completion, answer, prompt)`: 1/0 for the built-in tasks
and files, reasoning-gym's `score_answer` (partial credit, a float in [0, 1]) for `rg:` tasks.
Advantage: `retort.losses.policy.group_advantages` (`scale_rewards`: group std, batch std, none).

Filter (`filter_groups`, on by default): a group whose G rewards are all equal (solved in every
sample, or in none) has advantage 0 and teaches nothing but dilutes the token average; it is taken
out of the policy loss *and out of its count* (the step averages over fewer tokens; the batch is
not refilled with more prompts, as DAPO's dynamic sampling would). A micro-batch whose groups are
all filtered contributes 0. Logged: `solved_all`, `solved_none` (shares of groups: every reward
>= 1, every reward 0), `groups_kept`.

Truncation (`mask_truncated_completions`, on by default, as AceReason): a completion cut by
`max_new_tokens` keeps its reward in its group's mean and std but gets no loss (masked, not
penalised). A completion that stopped is trained on its EOS too.

Loss per completion token t of sample i, with rho = pi_theta / pi_old at the sampled token
(`retort.losses.policy.clipped_surrogate`, both at the sampling `temperature`):
    l_t = -min(rho_t A_i, clip(rho_t, 1 - epsilon, 1 + epsilon_high) A_i) + beta * k3(pi_theta, pi_ref)_t
`loss_type`: dapo (the default: summed over every kept token of the step, divided by their number
across micro-batches and processes: the loop's global normalisation), grpo (each sequence's token
mean, averaged over kept sequences), dr_grpo (summed, divided by kept sequences x max_new_tokens).
`beta` > 0 adds the KL to the starting student (a frozen copy; a LoRA student's adapters disabled),
0 by default as AceReason.

On-policy: every optimizer step samples afresh (`num_iterations=1`; the ratio is then exactly 1
and pi_old is not computed). `num_iterations=k` reuses each step's rollouts for k optimizer steps,
with pi_old the student's log-probs when they were sampled; the reused batches are part of the
method's checkpoint state, so a run resumed between two of those steps continues exactly.

Logged per step: `reward`, `reward_std` (the micro-batch's), `solved_all`, `solved_none`,
`groups_kept`, `completion_tokens` (mean, EOS not counted), `truncated`, `entropy` (mean per
completion token, at the sampling temperature), `clip_fraction`, and `kl` when beta > 0.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from ...config import param
from ...errors import ConfigError
from ...losses.policy import SCALES, clipped_surrogate, group_advantages, k3_kl
from ..data.collate import IGNORE, Encoded, collate
from ..rollout.generate import generate_ids
from .base import BatchPlan, LossOut, OffPolicy
from .examples import data_examples
from .hidden import last_hidden, unwrap

LOSS_TYPES = ("dapo", "grpo", "dr_grpo")
TENSORS = ("input_ids", "attention_mask", "labels", "pg_mask", "advantages", "rewards", "old_logps", "gate",
           "ref_logps")


@dataclass
class GroupConfig:
    """The fields of group-relative RL (`grpo`, `kepo`): TRL's `GRPOConfig` names where they exist."""

    num_generations: int = param(8, "completions sampled per prompt (G); train.batch_size counts completions and "
                                 "must be a multiple of it", lo=2)
    temperature: float = param(1.0, "sampling temperature of the rollouts (the policy's log-probs are taken at "
                               "it too)", lo=0.0, lo_open=True)
    top_p: float = param(1.0, "nucleus sampling of the rollouts", lo=0.0, hi=1.0, lo_open=True)
    max_new_tokens: int = param(96, "longest completion (TRL's max_completion_length)", lo=1)
    engine: str = param("auto", "rollout engine: auto (fast for Llama, Mistral, Qwen2 and Gemma 3 text decoders, "
                        "else hf), fast, or hf (transformers' generate)", choices=["auto", "fast", "hf"])
    epsilon: float = param(0.2, "lower clip of the importance ratio (1 - epsilon)", lo=0.0, hi=1.0)
    epsilon_high: float = param(0.2, "upper clip of the importance ratio (1 + epsilon_high); DAPO's clip-higher "
                                "uses 0.28", lo=0.0)
    beta: float = param(0.0, "weight of the k3 KL to the starting student (0: none, as AceReason and DAPO)", lo=0.0)
    loss_type: str = param("dapo", "token averaging: dapo (over every kept token of the step), grpo (per sequence, "
                           "then over sequences), dr_grpo (sum / (sequences x max_new_tokens))", choices=list(LOSS_TYPES))
    scale_rewards: str = param("group", "advantage scaling: by the group's reward std, the micro-batch's, or none "
                               "(Dr. GRPO)", choices=list(SCALES))
    mask_truncated_completions: bool = param(True, "completions cut at max_new_tokens get no loss (masked, not "
                                             "penalised); their reward still counts in the group's statistics")
    num_iterations: int = param(1, "optimizer steps per batch of rollouts (1: strictly on-policy; k > 1 reuses "
                                "them with the clipped ratio)", lo=1)
    filter_groups: bool = param(True, "drop groups whose rewards are all equal (solved by every sample or none) "
                                "from the loss and its token count; counted in the logs")


@dataclass
class Sample:
    """One completion of a group: trained under `prompt_ids`; sampled under `behaviour_ids` when that
    differs (a hinted context), whose log-probs are then pi_old."""

    prompt_ids: list
    token_ids: list
    stopped: bool
    text: str
    reward: float
    behaviour_ids: list | None = None


def _chunk_logps(hidden, weight, labels, temperature: float):
    z = hidden @ weight.T.to(hidden.dtype)
    z = z.to(torch.promote_types(z.dtype, torch.float32)) / temperature
    logz = torch.log_softmax(z, -1)
    return logz.gather(1, labels[:, None])[:, 0], (-(logz.exp() * logz).sum(-1)).detach()


def completion_logps(model, batch: dict, temperature: float, *, entropy: bool = False, chunk: int | None = None):
    """log pi(y_t) at every label token of `batch`, in order (N,), float32 at least, from the model's
    last hidden states and output embedding at `temperature`; with `entropy`, also the entropy of
    each of those N distributions (no gradient). The logits are formed a chunk of rows at a time and,
    under autograd, recomputed in backward (activation checkpointing): memory stays at one chunk's
    logits, not N x vocabulary (`chunk` rows; default from the vocabulary size)."""
    from torch.utils.checkpoint import checkpoint

    sel = batch["labels"][:, 1:] != IGNORE
    labels = batch["labels"][:, 1:][sel]
    hidden = last_hidden(model, batch)[:, :-1][sel]
    weight = unwrap(model).get_output_embeddings().weight
    step = chunk or max(16, (1 << 22) // weight.shape[0])
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    lps, ents = [], []
    for start in range(0, max(1, labels.shape[0]), step):
        args = (hidden[start:start + step], weight, labels[start:start + step], temperature)
        lp, ent = checkpoint(_chunk_logps, *args, use_reentrant=False) if grad else _chunk_logps(*args)
        lps.append(lp)
        ents.append(ent)
    lp, ent = torch.cat(lps), torch.cat(ents)
    return (lp, ent) if entropy else lp


class GroupPolicy(OffPolicy):
    """The shared frame (module docstring): `batches` samples groups and builds their tensors, `loss`
    is the clipped policy loss. A subclass may change the groups before they are scored
    (`explore`) and add to the loss (`extra_loss`)."""

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        g = cfg.num_generations
        if ctx.run.train.batch_size % g:
            raise ConfigError(f"train.batch_size={ctx.run.train.batch_size} counts completions and must be a multiple "
                              f"of method_args.num_generations={g} (the prompts of a micro-batch are sampled "
                              f"{g} times each)")
        self._cycle: dict | None = None  # the rollouts being reused (num_iterations > 1), for state_dict
        self._restored: dict | None = None
        self._reference = None

    def examples(self) -> list[Encoded]:
        data = data_examples(self.ctx)
        if any(x.multi_turn for x in data):
            raise ConfigError(f"method {self.name} samples one completion per prompt; the data has multi-turn rows "
                              "(messages), which sft and kd train on")
        if any(x.answer is None for x in data):
            raise ConfigError(f"method {self.name} rewards completions by the task's verifier and needs a reference "
                              f"answer for every prompt (data.source={self.ctx.run.data.source} has prompts without one)")
        return data

    # ------------------------------------------------------------------ rollouts
    def batches(self, plan: BatchPlan) -> Iterator[dict]:
        c = self.cfg
        mu = c.num_iterations
        prompts_plan = replace(plan, batch_size=plan.batch_size // c.num_generations, start_step=plan.start_step // mu)
        source = self.example_batches(prompts_plan)
        cycle, first = divmod(plan.start_step, mu)
        while True:
            cached: list[dict] = []
            if first:  # resumed between two steps that reuse one batch of rollouts: the checkpoint holds it
                got = self._restored or {}
                if got.get("cycle") != cycle or got.get("rank") != plan.rank or len(got["batches"]) != plan.accum:
                    raise ConfigError(f"--resume at step {plan.start_step}: the checkpoint does not hold the rollouts "
                                      f"this process reuses (method_args.num_iterations={mu}); save checkpoints at "
                                      "multiples of num_iterations (train.save_every) with more than one process")
                cached = got["batches"]
                self._cycle = {"cycle": cycle, "rank": plan.rank, "batches": cached}
                for _ in range(plan.accum):
                    next(source)
            for rep in range(first, mu):
                for a in range(plan.accum):
                    if len(cached) <= a:
                        chunk, items = next(source)
                        cached.append(self.group_batch(items, chunk, plan.seed))
                        self._cycle = {"cycle": cycle, "rank": plan.rank, "batches": cached}
                    yield cached[a]
            cycle, first = cycle + 1, 0

    def sample(self, model, prompts: list[list[int]], seed: int, n: int):
        """`n` completions of each prompt (token ids) from `model`."""
        c = self.cfg
        return generate_ids(unwrap(model), self.ctx.tokenizer, prompts, max_new_tokens=c.max_new_tokens,
                            temperature=c.temperature, top_p=c.top_p, num_samples=n,
                            batch_size=len(prompts) * n, seed=seed, engine=c.engine)

    def reward(self, text: str, item: Encoded) -> float:
        return float(self.ctx.task.reward(text, item.answer, item.prompt))

    def explore(self, items: list[Encoded], groups: list[list[Sample]], seed: int) -> dict:
        """Change the groups before their advantages are taken (KEPO's hints); metrics. None here."""
        return {}

    def group_batch(self, items: list[Encoded], chunk: int, seed: int) -> dict:
        """The tensors of one micro-batch: `items`' prompts sampled G times by the current student."""
        c, g = self.cfg, self.cfg.num_generations
        rng = random.Random(f"{seed}:groups:{chunk}")
        sample_seed = rng.randrange(2 ** 31)
        student = self.ctx.student()
        prompts = [x.input_ids[:x.prompt_len] for x in items]
        outs = self.sample(student, prompts, sample_seed, g)
        groups = [[Sample(p, comp.token_ids, comp.finish_reason == "stop", comp.text, self.reward(comp.text, x))
                   for comp in out] for x, p, out in zip(items, prompts, outs)]
        stats = self.explore(items, groups, sample_seed)
        samples = [s for grp in groups for s in grp]
        tok = self.ctx.tokenizer
        eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
        rows = []
        for s in samples:
            ids = s.token_ids + (eos if s.stopped else [])
            rows.append(Encoded(s.prompt_ids + ids, [IGNORE] * len(s.prompt_ids) + ids))
        batch = collate(rows, tok.pad_token_id)
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        r = rewards.view(-1, g)
        flat = r.max(1).values == r.min(1).values
        truncated = torch.tensor([not s.stopped for s in samples])
        keep = (~flat if c.filter_groups else torch.ones_like(flat)).repeat_interleave(g)
        if c.mask_truncated_completions:
            keep &= ~truncated
        sel = batch["labels"][:, 1:] != IGNORE
        batch["pg_mask"] = sel & keep[:, None]
        batch["advantages"] = group_advantages(rewards, g, c.scale_rewards)
        batch["rewards"] = rewards
        batch["old_logps"] = self._old_logps(student, batch, samples)
        if c.beta > 0:
            with torch.no_grad():
                ref = torch.zeros(sel.shape)
                ref[sel] = completion_logps(self.reference(), self._device(batch), c.temperature).float().cpu()
            batch["ref_logps"] = ref
        n = len(samples)
        stats.update({
            "reward": float(rewards.mean()), "reward_std": float(rewards.std()) if n > 1 else 0.0,
            "solved_all": float((r >= 1.0).all(1).float().mean()), "solved_none": float((r == 0).all(1).float().mean()),
            "groups_kept": float((~flat).float().mean()) if c.filter_groups else 1.0,
            "completion_tokens": sum(len(s.token_ids) for s in samples) / n, "truncated": float(truncated.float().mean()),
        })
        batch["stats"] = stats
        return batch

    def _old_logps(self, student, batch: dict, samples: list[Sample]) -> torch.Tensor:
        """pi_old at each completion token, (B, T-1), NaN where it is the current policy's (detached, at
        loss time: the ratio is then exactly 1): every token when num_iterations=1 and no sample was drawn
        under another context; else the student's log-probs now, under the context each was sampled in."""
        sel = batch["labels"][:, 1:] != IGNORE
        old = torch.full(sel.shape, float("nan"))
        other = [i for i, s in enumerate(samples) if s.behaviour_ids is not None]
        if self.cfg.num_iterations == 1 and not other:
            return old
        t = self.cfg.temperature
        with torch.no_grad():
            if self.cfg.num_iterations > 1:
                old[sel] = completion_logps(student, self._device(batch), t).float().cpu()
            if other:
                tok = self.ctx.tokenizer
                eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
                rows = []
                for i in other:
                    s = samples[i]
                    ids = s.token_ids + (eos if s.stopped else [])
                    rows.append(Encoded(s.behaviour_ids + ids, [IGNORE] * len(s.behaviour_ids) + ids))
                lp = completion_logps(student, self._device(collate(rows, tok.pad_token_id)), t).float().cpu()
                at = 0
                for i in other:
                    k = int(sel[i].sum())
                    old[i, sel[i]] = lp[at:at + k]
                    at += k
        return old

    def _device(self, batch: dict) -> dict:
        return {k: v.to(self.ctx.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def reference(self):
        """The frozen starting student (beta > 0), loaded once."""
        if self._reference is None:
            self._reference = self.ctx.frozen_initial_student()
        return self._reference

    # ------------------------------------------------------------------ loss
    def count(self, batch: dict) -> int:
        m = batch["pg_mask"]
        if self.cfg.loss_type == "dapo":
            return int(m.sum())
        seqs = int(m.any(1).sum())
        return seqs * self.cfg.max_new_tokens if self.cfg.loss_type == "dr_grpo" else seqs

    def loss(self, model, batch: dict) -> LossOut:
        c = self.cfg
        sel = batch["labels"][:, 1:] != IGNORE
        lp, ent = completion_logps(model, batch, c.temperature, entropy=True)
        rows = sel.nonzero()[:, 0]
        m = batch["pg_mask"][sel]
        adv = batch["advantages"].to(lp.dtype)[rows]
        old = batch["old_logps"][sel].to(lp.dtype)
        old = torch.where(torch.isnan(old), lp.detach(), old)
        per_token, low, high = clipped_surrogate(lp, old, adv, epsilon_low=c.epsilon, epsilon_high=c.epsilon_high)
        metrics = dict(batch.get("stats", {}))
        if c.beta > 0:
            kl = k3_kl(lp, batch["ref_logps"][sel].to(lp.dtype))
            per_token = per_token + c.beta * kl
            metrics["kl"] = float(kl.detach()[m].mean()) if m.any() else 0.0
        per_token = torch.where(m, per_token, torch.zeros_like(per_token))
        if c.loss_type == "grpo":
            b = sel.shape[0]
            seq_sum = per_token.new_zeros(b).index_add(0, rows, per_token)
            seq_n = per_token.new_zeros(b).index_add(0, rows, m.to(per_token.dtype))
            loss = (seq_sum / seq_n.clamp(min=1.0)).sum()
        else:
            loss = per_token.sum()
        n_kept = int(m.sum())
        metrics["entropy"] = float(ent.mean()) if ent.numel() else 0.0
        metrics["clip_fraction"] = float((low | high)[m].float().mean()) if n_kept else 0.0
        out = LossOut(loss, self.count(batch), metrics)
        return self.extra_loss(model, batch, out)

    def extra_loss(self, model, batch: dict, out: LossOut) -> LossOut:
        """A term added to the policy loss (KEPO's gated distillation); none here."""
        return out

    # ------------------------------------------------------------------ state across a resume
    def state_dict(self) -> dict:
        """The rollouts being reused, when a checkpoint falls between two steps that share them."""
        mu = self.cfg.num_iterations
        cyc = self._cycle
        if mu == 1 or cyc is None or self.step % mu == 0 or cyc["cycle"] != self.step // mu:
            return {}
        state: dict = {"cycle": {"cycle": cyc["cycle"], "rank": cyc["rank"], "n": len(cyc["batches"]),
                                 "stats": [b["stats"] for b in cyc["batches"]]}}
        for i, b in enumerate(cyc["batches"]):
            for k in TENSORS:
                if k in b:
                    state[f"cycle.{i}.{k}"] = b[k]
        return state

    def load_state_dict(self, state: dict) -> None:
        info = state.get("cycle")
        if not info:
            return
        batches = []
        for i in range(info["n"]):
            b = {k: state[f"cycle.{i}.{k}"] for k in TENSORS if f"cycle.{i}.{k}" in state}
            b["stats"] = info["stats"][i]
            batches.append(b)
        self._restored = {"cycle": info["cycle"], "rank": info["rank"], "batches": batches}


__all__ = ["LOSS_TYPES", "GroupConfig", "GroupPolicy", "Sample", "completion_logps"]

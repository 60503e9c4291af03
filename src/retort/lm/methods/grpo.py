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

import random
from dataclasses import dataclass, replace

import torch

from ...config import param
from ...errors import ConfigError
from ..data.collate import IGNORE, Encoded, collate
from ..data.turns import mind_reward
from ..rollout.generate import generate_ids
from .curriculum import LengthCurriculum, nearest_temperature
from .groups import GroupConfig, GroupPolicy, completion_logps
from .hidden import unwrap

REWARDS = ("verifier", "mind_turns")


class GRPO(GroupPolicy):
    """Groups of the student's own samples, rewarded by the task's verifier (`GroupPolicy`)."""

    name = "grpo"
    paper = ("AceReason-Nemotron (Chen et al. 2025, arXiv:2505.16400); GRPO (Shao et al. 2024, arXiv:2402.03300); "
             "DAPO (Yu et al. 2025, arXiv:2503.14476)")
    equation = ("A_i = (r_i - mean_G r) / (std_G r + 1e-4); L = sum_{i,t} -min(rho A_i, clip(rho, 1-eps, 1+eps_high) "
                "A_i) + beta k3(pi || pi_ref), / kept tokens")

    @dataclass
    class Config(GroupConfig):
        reward: str = param("verifier", "the reward: the task's verifier, or mind_turns (MinD: correct answers in "
                            "fewer turns earn more, malformed turn formats -1)", choices=list(REWARDS))
        mind_eta: float = param(0.5, "reward=mind_turns: eta, the weight of the turn-count bonus", lo=0.0)
        mind_k_max: int = param(8, "reward=mind_turns: K_max, the turn count at which the bonus reaches 0", lo=1)
        length_stages: list[int] = param([], "response-length curriculum: max_new_tokens of each stage, increasing "
                                         "(empty: max_new_tokens throughout); a stage ends on a plateau of reward "
                                         "and length")
        plateau_steps: int = param(10, "length_stages: W, the window of steps whose means are compared with the W "
                                   "before", lo=1)
        plateau_tol: float = param(0.01, "length_stages: a plateau is a gain of at most this in mean reward and in "
                                   "mean length / max_new_tokens", lo=0.0)
        target_entropy: float = param(0.0, "> 0: at the start of each stage pick, of probe_temperatures, the one "
                                      "whose sampled per-token entropy is nearest this (AceReason: 0.3)", lo=0.0)
        probe_temperatures: list[float] = param([0.6, 0.8, 1.0, 1.2], "target_entropy: the temperatures probed")
        probe_prompts: int = param(8, "target_entropy: prompts sampled (once each) per probed temperature", lo=1)

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        stages = list(cfg.length_stages)
        if any(not isinstance(n, int) or n < 1 for n in stages) or stages != sorted(set(stages)):
            raise ConfigError(f"method_args.length_stages={stages}: expected increasing whole numbers of tokens "
                              "(e.g. [64, 96, 128])")
        if cfg.target_entropy > 0 and (not cfg.probe_temperatures or min(cfg.probe_temperatures) <= 0):
            raise ConfigError(f"method_args.probe_temperatures={list(cfg.probe_temperatures)}: expected one or more "
                              "temperatures > 0 to probe for target_entropy")
        self.curriculum = LengthCurriculum(stages, cfg.plateau_steps, cfg.plateau_tol) if stages else None
        if self.curriculum is not None:
            self.cfg = replace(cfg, max_new_tokens=self.curriculum.cap)
        self._seen: list[tuple[float, float]] = []  # (reward, length) of the rollouts sampled since the last step
        self._probed: int | None = None  # the stage whose temperature was probed
        self._probe_entropy = float("nan")
        self._data: list | None = None

    @property
    def stage(self) -> int:
        return self.curriculum.stage if self.curriculum is not None else 0

    def examples(self) -> list[Encoded]:
        if self._data is None:
            self._data = super().examples()
        return self._data

    def reward(self, text: str, item: Encoded) -> float:
        c = self.cfg
        if c.reward == "mind_turns":
            return mind_reward(text, item.answer, item.prompt, self.ctx.task, eta=c.mind_eta, k_max=c.mind_k_max)
        return super().reward(text, item)

    def group_batch(self, items: list[Encoded], chunk: int, seed: int) -> dict:
        c = self.cfg
        if c.target_entropy > 0 and self._probed != self.stage:
            self.probe_temperature(seed)
        batch = super().group_batch(items, chunk, seed)
        stats = batch["stats"]
        self._seen.append((stats["reward"], stats["completion_tokens"]))
        stats.update({"temperature": self.cfg.temperature, "max_new_tokens": float(self.cfg.max_new_tokens),
                      "length_stage": float(self.stage)})
        if c.target_entropy > 0:
            stats["probe_entropy"] = self._probe_entropy
        return batch

    def probe_temperature(self, seed: int) -> float:
        """Pick this stage's temperature (`target_entropy`, module docstring) and sample at it; returns it."""
        c, tok = self.cfg, self.ctx.tokenizer
        seen, items = set(), []
        for x in self.examples():
            if str(x.prompt) not in seen and len(items) < c.probe_prompts:
                seen.add(str(x.prompt))
                items.append(x)
        prompts = [x.input_ids[:x.prompt_len] for x in items]
        student = self.ctx.student()
        eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
        probe_seed = random.Random(f"{seed}:probe:{self.stage}").randrange(2 ** 31)
        entropies = {}
        for t in sorted({float(t) for t in c.probe_temperatures}):
            outs = generate_ids(unwrap(student), tok, prompts, max_new_tokens=c.max_new_tokens, temperature=t,
                                top_p=c.top_p, num_samples=1, batch_size=len(prompts), seed=probe_seed, engine=c.engine)
            rows = []
            for p, (comp,) in zip(prompts, outs):
                ids = comp.token_ids + (eos if comp.finish_reason == "stop" else [])
                rows.append(Encoded(p + ids, [IGNORE] * len(p) + ids))
            with torch.no_grad():
                _, ent = completion_logps(student, self._device(collate(rows, tok.pad_token_id)), t, entropy=True)
            entropies[t] = float(ent.mean()) if ent.numel() else 0.0
        pick = nearest_temperature(entropies, c.target_entropy)
        self.cfg = replace(self.cfg, temperature=pick)
        self._probed, self._probe_entropy = self.stage, entropies[pick]
        self.ctx.say(f"grpo: stage {self.stage} (max_new_tokens {c.max_new_tokens}): temperature {pick} "
                     f"(entropy {entropies[pick]:.3f}, target {c.target_entropy}; probed "
                     + ", ".join(f"{t}: {h:.3f}" for t, h in entropies.items()) + ")")
        return pick

    def on_step(self, step: int) -> None:
        super().on_step(step)
        if self.curriculum is None or not self._seen or step % self.cfg.num_iterations:
            return
        sums = torch.tensor([sum(r for r, _ in self._seen), sum(n for _, n in self._seen), len(self._seen)],
                            dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sums = sums.to(self.ctx.device)  # NCCL reduces no CPU tensor
            torch.distributed.all_reduce(sums)  # every process takes the same step to the next stage
        self._seen = []
        reward, length, n = sums.cpu().tolist()
        if self.curriculum.observe(reward / n, length / n):
            self.cfg = replace(self.cfg, max_new_tokens=self.curriculum.cap)
            self.ctx.say(f"grpo: step {step}: reward and length plateaued; stage {self.stage}, max_new_tokens "
                         f"{self.curriculum.cap}")

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.curriculum is not None:
            state["curriculum"] = self.curriculum.state_dict()
        if self._probed is not None:
            state["probe"] = {"stage": self._probed, "temperature": self.cfg.temperature,
                              "entropy": self._probe_entropy}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.curriculum is not None and "curriculum" in state:
            if state["curriculum"]["stage"] >= len(self.curriculum.stages):
                raise ConfigError(f"--resume: the checkpoint is in length stage {state['curriculum']['stage']}, "
                                  f"past method_args.length_stages={self.curriculum.stages}; resume with the stages "
                                  "the run began with")
            self.curriculum.load_state_dict(state["curriculum"])
            self.cfg = replace(self.cfg, max_new_tokens=self.curriculum.cap)
        if "probe" in state:
            p = state["probe"]
            self._probed, self._probe_entropy = int(p["stage"]), float(p["entropy"])
            self.cfg = replace(self.cfg, temperature=float(p["temperature"]))

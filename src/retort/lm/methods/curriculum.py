"""AceReason-Nemotron's two schedules for group RL (Chen et al. 2025, arXiv:2505.16400, spec §19.2),
as rules free of models (known-answer tested); `grpo` applies them (not a method).

- `LengthCurriculum`: stages of `max_new_tokens` (8K -> 16K -> 24K in the paper), moving to the
  next "once the reward/length plateaus". The paper gives no formula; retort's rule: each optimizer
  step that sampled rollouts adds (mean reward, mean completion length / the stage's cap) to the
  stage's history; once it holds 2W of them (W = `plateau_steps`), the stage has plateaued when
  the mean of the last W improves on the mean of the W before by no more than `tol` in reward AND
  in normalised length. The stage then advances and its history starts afresh. The last stage stays.
- `nearest_temperature`: "temperature chosen so that the temperature-adjusted entropy stays around
  0.3": of the probed temperatures, the one whose mean per-token entropy of the student's own
  samples (at that temperature) is nearest `target`; ties go to the lower temperature.
"""

from __future__ import annotations

from statistics import fmean


class LengthCurriculum:
    """The stage rule (module docstring). `observe` takes one step's means; `state_dict` /
    `load_state_dict` carry it across a resume (JSON values)."""

    def __init__(self, stages: list[int], plateau_steps: int, tol: float):
        self.stages, self.window, self.tol = list(stages), int(plateau_steps), float(tol)
        self.stage = 0
        self.history: list[tuple[float, float]] = []

    @property
    def cap(self) -> int:
        return self.stages[self.stage]

    def plateaued(self) -> bool:
        w = self.window
        if len(self.history) < 2 * w:
            return False
        before, last = self.history[-2 * w:-w], self.history[-w:]
        gain_r = fmean(r for r, _ in last) - fmean(r for r, _ in before)
        gain_len = fmean(n for _, n in last) - fmean(n for _, n in before)
        return gain_r <= self.tol and gain_len <= self.tol

    def observe(self, reward: float, length: float) -> bool:
        """Add one step's mean reward and mean completion length (tokens); True when this moved the
        curriculum to its next stage."""
        self.history.append((float(reward), float(length) / self.cap))
        if self.stage + 1 < len(self.stages) and self.plateaued():
            self.stage += 1
            self.history = []
            return True
        return False

    def state_dict(self) -> dict:
        return {"stage": self.stage, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.stage = int(state["stage"])
        self.history = [(float(r), float(n)) for r, n in state["history"]]


def nearest_temperature(entropies: dict[float, float], target: float) -> float:
    """The temperature whose entropy is nearest `target` (ties: the lower temperature)."""
    if not entropies:
        raise ValueError("nearest_temperature: no probed temperature")
    return min(sorted(entropies), key=lambda t: abs(entropies[t] - target))


__all__ = ["LengthCurriculum", "nearest_temperature"]

"""`kepo`: Knowledge-Enhanced Preference Optimization (arXiv:2602.00400), methods/llm.md section 16:
GRPO (`retort.lm.methods.groups`, every rule of `grpo`) plus two terms from a teacher.

Quality-gated distillation. g_i = 1[r_i >= gate_min] (gate_min 1: the task verifies the answer, the
rule of the on-policy methods' `gate`); on the gated samples only, the per-token divergence of
`kd` (reverse KL KL(P_S || P_T) by default, full distributions through the fused path, or the
teacher's top-k when it only scores) is added with weight `lambda_kd`:
    L = sum_pg l_t + lambda_kd * sum_{i: g_i} sum_t KL(P_S,t || P_T,t),  / the step's trained tokens
Both terms are averaged over the same tokens (those either term trains: the loop's one global
count), not the spec's separate 1/sum_i g_i|y_i| for the second, which could not be global across
micro-batches; so a group every sample solves, filtered out of the policy term, is still distilled.

Knowledge-enhanced exploration. When all G rewards of a group are 0, a hint for its prompt (`hints`:
the teacher's greedy solution, generated once per prompt and cached, the cache carried in the
checkpoint; the first correct trace of the prompt in a trace set; or the task's worked solution),
cut to its first part (`hint_share` of its lines), is put into the prompt (`hint_template`) and the
student samples G completions under it, at most `hint_tries` (M) rounds, until one is rewarded. Up
to `hint_keep` rewarded ones replace zero-reward samples of the group. `hint_context=unhinted` (the
default, the spec's reading): they are trained under the prompt *without* the hint, with pi_old
their log-probs under the hinted context, so the importance ratio pi(y|x) / pi(y|x,h) is clipped
like any other; `hinted`: the hint stays in their context (the off-policy bias accepted). Logged:
`zero_groups_before` and `zero_groups_after` (shares of groups with every reward 0, before and after
the hints), `hinted` (share of samples inserted), `hint_rounds` (mean rounds per hinted group),
`gated` (share of samples distilled on) and `kd` (per gated token).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ...config import param
from ...errors import ConfigError, DataError
from ...losses.divergences import DIVERGENCES
from ..data.collate import IGNORE, encode_prompt
from ..tasks.base import Prompt
from .base import LossOut
from .distill import DivergenceConfig, LazyTeacher, TopkConfig, distill
from .groups import GroupConfig, GroupPolicy, Sample

HINTS = ("teacher", "traces", "solution", "none")


@dataclass
class _KDTerm(DivergenceConfig, TopkConfig):
    """What `distill` reads: the divergence at temperature 1 (the teacher's distribution itself)."""

    temperature: float = 1.0


def first_part(text: str, share: float) -> str:
    """The first `share` of `text`'s lines (at least one), or of its characters when it is one line."""
    lines = text.strip().splitlines()
    if len(lines) > 1:
        return "\n".join(lines[:max(1, math.ceil(share * len(lines)))])
    return text.strip()[:max(1, math.ceil(share * len(text.strip())))]


class KEPO(GroupPolicy):
    """`GroupPolicy` with hinted exploration for all-zero groups (`explore`) and the gated
    distillation term (`extra_loss`)."""

    name = "kepo"
    paper = "KEPO: Knowledge-Enhanced Preference Optimization, arXiv:2602.00400 (methods/llm.md section 16)"
    equation = ("L = L_GRPO + lambda_kd * sum_i 1[r_i >= r_min] sum_t KL(P_S,t || P_T,t); all-zero groups get hinted "
                "samples (<= M rounds) trained under the unhinted prompt with a clipped ratio")

    @dataclass
    class Config(GroupConfig, TopkConfig):
        lambda_kd: float = param(0.5, "weight of the gated distillation term (the spec's 0.1 to 1; 0: none)", lo=0.0)
        divergence: str = param("reverse_kl", "per-token divergence of the gated term (KL(P_S || P_T) by default)",
                                choices=list(DIVERGENCES))
        gate_min: float = param(1.0, "r_min: samples whose reward reaches it are distilled on (1: verified)", lo=0.0)
        hints: str = param("teacher", "hints for groups whose rewards are all 0: teacher (its greedy solution, "
                           "generated once per prompt and cached), traces (the first correct trace of the prompt in "
                           "hint_traces), solution (the task's worked solution), none (no hinted exploration)",
                           choices=list(HINTS))
        hint_traces: str = param("", "hints=traces: the trace set (a `retort traces` directory)")
        hint_share: float = param(0.5, "share of the hint's lines kept (its first part; of its characters when it "
                                  "is one line)", lo=0.0, hi=1.0, lo_open=True)
        hint_template: str = param("{prompt}\nHint: {hint}\n", "the hinted prompt, from {prompt} and {hint}")
        hint_tries: int = param(2, "M: rounds of G hinted samples at most, until one is rewarded", lo=1)
        hint_keep: int = param(1, "rewarded hinted samples inserted per group (replacing zero-reward ones)", lo=1)
        hint_context: str = param("unhinted", "inserted samples trained under the prompt without the hint, ratio "
                                  "to their hinted log-probs clipped (unhinted), or with the hint kept (hinted)",
                                  choices=["unhinted", "hinted"])
        hint_max_tokens: int = param(256, "hints=teacher: longest hint the teacher writes", lo=1)

    def __init__(self, ctx, cfg):
        if cfg.loss_type != "dapo" and cfg.lambda_kd > 0:
            raise ConfigError(f"method kepo: method_args.loss_type={cfg.loss_type} is not supported with lambda_kd > 0 "
                              "(the distillation term is a token average); use loss_type=dapo")
        if cfg.hints == "traces" and not cfg.hint_traces:
            raise ConfigError("method_args.hints=traces needs method_args.hint_traces=DIR (a `retort traces` set)")
        if "{prompt}" not in cfg.hint_template or "{hint}" not in cfg.hint_template:
            raise ConfigError(f"method_args.hint_template={cfg.hint_template!r} must contain {{prompt}} and {{hint}}")
        if cfg.hint_keep >= cfg.num_generations:
            raise ConfigError(f"method_args.hint_keep={cfg.hint_keep} must be below num_generations="
                              f"{cfg.num_generations} (a group of only hinted samples has no spread)")
        super().__init__(ctx, cfg)
        self.run_teacher = LazyTeacher(ctx)
        self.kd = _KDTerm(divergence=cfg.divergence, kd_weight=cfg.lambda_kd, t_squared=False, topk=cfg.topk)
        self._hints: dict = {}  # prompt -> hint (None: none found), carried in the checkpoint
        self._traces = None

    def teacher_needs(self) -> tuple:
        ways = [{"hidden"}, {"score"}] if self.cfg.lambda_kd > 0 else [set()]
        if self.cfg.hints == "teacher":
            ways = [w | {"generate"} for w in ways]
        return tuple(w for w in ways if w)

    # ------------------------------------------------------------------ hints
    def hint(self, item) -> str | None:
        """The cached hint of `item`'s prompt (first part), made on first use."""
        return self.hints_for([item])[0]

    def hints_for(self, items) -> list:
        """The cached hints of `items`' prompts; the missing ones made now (a teacher's in one call)."""
        c = self.cfg
        missing = list({str(x.prompt): x for x in items if str(x.prompt) not in self._hints}.values())
        if missing:
            if c.hints == "solution":
                full = [x.solution for x in missing]
            elif c.hints == "traces":
                full = [self._trace_hints().get(str(x.prompt)) for x in missing]
            else:
                teacher = self.run_teacher.open(self.ctx.student())
                outs = teacher.generate([x.prompt for x in missing], max_new_tokens=c.hint_max_tokens,
                                        temperature=0.0, num_samples=1)
                full = [out[0].text for out in outs]
            for x, text in zip(missing, full):
                self._hints[str(x.prompt)] = first_part(text, c.hint_share) if text and text.strip() else None
        return [self._hints[str(x.prompt)] for x in items]

    def _trace_hints(self) -> dict:
        if self._traces is None:
            from ..data.traces import read_traces

            cols = read_traces(self.cfg.hint_traces, columns=["prompt", "completion", "correct"]).to_pydict()
            self._traces = {}
            for p, comp, ok in zip(cols["prompt"], cols["completion"], cols["correct"]):
                if ok and p not in self._traces:
                    self._traces[p] = comp
            if not self._traces:
                raise DataError(f"method_args.hint_traces={self.cfg.hint_traces}: no correct trace to take hints from")
        return self._traces

    def explore(self, items, groups: list[list[Sample]], seed: int) -> dict:
        """Hinted samples for the groups whose rewards are all 0 (module docstring)."""
        c, g = self.cfg, self.cfg.num_generations
        zero = [i for i, grp in enumerate(groups) if all(s.reward <= 0 for s in grp)]
        before = len(zero)
        hinted, rounds = 0, 0
        todo = {}
        if c.hints != "none" and zero:
            tok = self.ctx.tokenizer
            for i, h in zip(zero, self.hints_for([items[i] for i in zero])):
                if h is not None:
                    p = items[i].prompt
                    text = c.hint_template.format(prompt=p, hint=h)
                    todo[i] = encode_prompt(tok, Prompt(text, getattr(p, "system", None)))
        tried = set(todo)
        student = self.ctx.student()
        for t in range(c.hint_tries):
            if not todo:
                break
            order = sorted(todo)
            outs = self.sample(student, [todo[i] for i in order], random.Random(f"{seed}:hint:{t}").randrange(2 ** 31), g)
            rounds += len(order)
            for i, out in zip(order, outs):
                x = items[i]
                good = [(comp, r) for comp in out if (r := self.reward(comp.text, x)) > 0][:c.hint_keep]
                if not good:
                    continue
                plain = groups[i][0].prompt_ids
                for j, (comp, r) in enumerate(good):
                    unhinted = c.hint_context == "unhinted"
                    groups[i][j] = Sample(plain if unhinted else todo[i], comp.token_ids, comp.finish_reason == "stop",
                                          comp.text, r, behaviour_ids=todo[i] if unhinted else None)
                hinted += len(good)
                del todo[i]
        n = max(1, len(groups))
        after = sum(all(s.reward <= 0 for s in grp) for grp in groups)
        return {"zero_groups_before": before / n, "zero_groups_after": after / n, "hinted": hinted / (n * g),
                "hint_rounds": rounds / len(tried) if tried else 0.0}

    # ------------------------------------------------------------------ the gated term
    def group_batch(self, items, chunk: int, seed: int) -> dict:
        batch = super().group_batch(items, chunk, seed)
        batch["gate"] = batch["rewards"] >= self.cfg.gate_min
        batch["stats"]["gated"] = float(batch["gate"].float().mean())
        return batch

    def _trained(self, batch):
        sel = batch["labels"][:, 1:] != IGNORE
        if self.cfg.lambda_kd <= 0:
            return batch["pg_mask"]
        return batch["pg_mask"] | (sel & batch["gate"][:, None])

    def count(self, batch: dict) -> int:
        if self.cfg.lambda_kd <= 0:
            return super().count(batch)
        return int(self._trained(batch).sum())

    def extra_loss(self, model, batch: dict, out: LossOut) -> LossOut:
        if self.cfg.lambda_kd <= 0:
            return out
        gate = batch["gate"]
        if not bool(gate.any()):
            out.metrics["kd"] = 0.0
            return out
        labels = batch["labels"].masked_fill(~gate[:, None], IGNORE)
        gated = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
        kd = distill(model, self.run_teacher, gated, self.kd, student_vocab=len(self.ctx.tokenizer))
        out.metrics["kd"] = kd.metrics.get("kd", 0.0)
        return LossOut(out.loss + kd.loss, out.count, out.metrics)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "hints": self._hints}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._hints = dict(state.get("hints") or {})

"""`opsd`: On-Policy Self-Distillation (Zhao et al. 2026, arXiv:2601.18734).

One model plays both roles. The student is the model given the question only; the teacher is the
*frozen initial* model (`teacher_mode=fixed`, the released code's recommended setting; `current`
uses the current weights without gradient) given privileged information: the question, a
verified worked solution and an instruction to derive the answer itself. The student samples its
own rollouts (temperature 1.1 by default, the same temperature as in the loss), and the loss per
rollout token t is
    L_t = JSD_beta( P_T^tau(. | x_priv, y_<t) || P_S^tau(. | x, y_<t) ),  beta = 0.5, tau = 1.1
(generalized JSD, `beta` weights the teacher), through the fused chunked loss with the teacher's
hidden states taken at the same completion tokens under its own, longer prompt. With identical
contexts (`privileged_template="{prompt}"`) the teacher equals the student at step 0 and the
loss is 0 (tested).

`privileged_template` fills {prompt} and {solution}. `auto` is the paper's wording for a real
tokenizer, and `{prompt}{solution}\\n{prompt}` (question, worked solution, question again) for
retort's character-level presets, whose alphabet has no room for English instructions. Needs
worked solutions: `data.source=solutions` (or a file task with a solution field).
The fixed teacher, as in the released code: with a LoRA student (`student.lora.r > 0`, the
authors' r 64 / alpha 128 on q/k/v/o/gate/up/down) it is the student itself with its adapters
disabled (`retort.lm.models.lora.AdaptersDisabled`: the same weights, eval mode, no gradient; the base
weights never train and B starts at zero, so this is exactly the initial student, at no extra
memory). With full fine-tuning it is a second, frozen copy of the initial student
(`load_initial_student`).
Not yet here: the EMA teacher, the top-k restricted loss, `reason_first`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...config import param
from ...errors import ConfigError
from ..data.collate import IGNORE, collate, encode_prompt
from ..teachers import LocalTeacher
from .base import LossOut
from .distill import DivergenceConfig, default_of, distill_tokens
from .onpolicy import OnPolicy, RolloutConfig

PAPER_TEMPLATE = (
    "{prompt}\n\nHere is a reference solution to this problem:\n{solution}\n\n\nAfter understanding the reference "
    "solution and the rationale behind each step, now articulate your own step-by-step reasoning that derives the "
    "same final answer to the problem below:\n\n{prompt}")
COMPACT_TEMPLATE = "{prompt}{solution}\n{prompt}"


class OPSD(OnPolicy):
    """Rollouts of the student (`OnPolicy`) graded by the student's own initial (or current) self
    under the privileged prompt, with the fused loss of `retort.lm.methods.distill`."""

    name = "opsd"
    paper = "Zhao et al. 2026, On-Policy Self-Distillation (OPSD), arXiv:2601.18734"
    equation = "y ~ p_S(.|x); L = sum_t JSD_beta(p_0(.|x_priv, y_<t) || p_S(.|x, y_<t)) at tau = 1.1"

    @dataclass
    class Config(RolloutConfig, DivergenceConfig):
        temperature: float = default_of(RolloutConfig, "temperature", 1.1)
        divergence: str = default_of(DivergenceConfig, "divergence", "jsd")
        t_squared: bool = default_of(DivergenceConfig, "t_squared", False, "multiply the loss by T^2")
        kd_weight: float = default_of(DivergenceConfig, "kd_weight", 1.0, "weight of the divergence (per-token nats)",
                                      lo_open=True)
        teacher_mode: str = param("fixed", "fixed: the initial student is the teacher (a LoRA student with its "
                                  "adapters disabled, else a frozen copy); current: the current weights (no "
                                  "gradient through the teacher)", choices=["fixed", "current"])
        privileged_template: str = param("auto", "the teacher's prompt, with {prompt} and {solution}; auto: the "
                                         "paper's wording, or {prompt}{solution}\\n{prompt} for character-level presets")

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        tpl = cfg.privileged_template
        if tpl == "auto":
            tpl = PAPER_TEMPLATE if len(ctx.tokenizer) >= 1000 else COMPACT_TEMPLATE
        if "{prompt}" not in tpl:
            raise ConfigError(f"method_args.privileged_template must contain {{prompt}}, got {tpl!r}")
        self.template = tpl
        self._self_teacher = None

    def examples(self):
        data = super().examples()
        if "{solution}" in self.template and any(x.solution is None for x in data):
            raise ConfigError("opsd's teacher sees a worked solution: use data.source=solutions "
                              f"(data.source={self.ctx.run.data.source} has prompts without one)")
        unk = self.ctx.tokenizer.unk_token_id
        if unk is not None and data:
            x = data[0]
            if unk in encode_prompt(self.ctx.tokenizer, self.template.format(prompt=x.prompt, solution=x.solution)):
                raise ConfigError("method_args.privileged_template has characters the student's tokenizer does not "
                                  f"know: {self.template!r}")
        return data

    def teacher(self, model):
        if self.cfg.teacher_mode == "current":
            return model
        if self._self_teacher is None:
            self._self_teacher = self.ctx.frozen_initial_student()
        return self._self_teacher

    def teacher_batch(self, items) -> dict:
        tok, out = self.ctx.tokenizer, []
        for x in items:
            p = encode_prompt(tok, self.template.format(prompt=x.prompt, solution=x.solution))
            out.append(replace(x, input_ids=p + x.input_ids[x.prompt_len:],
                               labels=[IGNORE] * len(p) + x.labels[x.prompt_len:]))
        return collate(out, tok.pad_token_id)

    def loss(self, model, batch) -> LossOut:
        tb = {k: v.to(batch["input_ids"].device) for k, v in self.teacher_batch(batch["items"]).items()}
        teacher = LocalTeacher("the self-teacher", self.teacher(model), self.ctx.tokenizer)
        out = distill_tokens(model, teacher, batch, self.cfg, len(self.ctx.tokenizer), teacher_batch=tb)
        out.metrics.update(batch.get("stats", {}))
        return out

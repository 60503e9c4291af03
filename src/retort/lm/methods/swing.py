"""`swing`: Swing distillation for language models (Li, Wu, Dong, Wu, Bian, Xiong 2022, "Swing
Distillation: A Privacy-Preserving Knowledge Distillation Framework", arXiv 2212.08349), as retort's
spec reconstructs it from the abstract (methods/other.md §3.2, [I]; no code or equations reached).

Token-level KD on `kd`'s data with the teacher online, where each target token's temperature rises
with its privacy score rho_t (a rule-based detector on the decoded text: digits, long numbers,
e-mail addresses, phone numbers, names; `retort.lm.data.pii`), and the teacher's soft targets get
noise. Per completion token t (the position that predicts it):

    tau_t = temperature + rise * rho_t
    q~_t  = normalize(max(softmax(z_t^T / tau_t) + eta_t, 0)),    eta_t ~ N(0, (noise / V)^2 I)
    L_t   = kd_weight * s_t^2 * D(P_S^{s_t} || q~_t) + ce_weight * [rho_t < ce_below] CE(y_t)

D is forward KL(q~ || P_S) by default (the spec's; any of `kd`'s divergences but those that go
infinite where the noise empties a class). s_t is the student's temperature: `temperature` on every
token by default (`student_temperature=base`: only the teacher's target swings, flattened where
the token is private), or tau_t (`swung`: the spec's literal L = tau^2 KL(q~ || P_S^tau)). Why base:
with both sides at a high tau the KD term tends to matching the logits themselves (Hinton et al.'s
high-temperature limit), which passes on what the teacher memorised instead of shielding it; on
digits with private rows relabelled (benchmarks/swing_digits.py) `swung` students reproduced more
of the teacher's memorised labels than `kd`'s, `base` students fewer. With rho = 0 everywhere and
noise = 0 it is `kd`'s loss at T = `temperature` (tested). Both models' logits are formed chunk by
chunk from their last hidden states and recomputed in backward, so memory stays at one chunk's
logits; a chunk's noise comes from a generator seeded by (run seed, micro-batch, chunk), so it is
drawn again identically in backward and after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import param
from ...errors import ConfigError
from ...losses.swing import infinite_with_noise, swing_kd, swing_temperature, target_noise
from ..data.collate import IGNORE, collate
from ..data.pii import DEFAULT_RULES, RULES, parse_rules, token_scores
from .base import LossOut, OffPolicy
from .distill import DivergenceConfig, LazyTeacher
from .examples import data_examples
from .hidden import last_hidden, unwrap


class Swing(OffPolicy):
    """The data of `sft` (`data_examples`), each token scored by the detector once; the run's
    teacher online (`LazyTeacher`, with hidden states)."""

    name = "swing"
    paper = ("Li et al. 2022, Swing Distillation: A Privacy-Preserving Knowledge Distillation Framework, "
             "arXiv:2212.08349 (the spec's reconstruction from the abstract)")
    equation = ("L = sum_t kd_weight * s_t^2 * D(P_S^s_t || q~_t) + ce_weight * [rho_t < ce_below] CE_t,  "
                "q~_t = normalize(max(P_T^tau_t + eta_t, 0)),  tau_t = T + rise * rho_t,  s_t = T (base) or tau_t "
                "(swung)")

    @dataclass
    class Config(DivergenceConfig):
        temperature: float = param(1.0, "tau_0: the temperature of tokens with rho = 0 (the spec's 1-2; kd's 1)",
                                   lo=0.0, lo_open=True)
        rise: float = param(9.0, "tau_max - tau_0: how much a token's temperature rises at rho = 1 (the spec's "
                            "tau_max = 10)", lo=0.0)
        noise: float = param(0.2, "std of the noise on the teacher's soft targets, in units of 1/V (V: the "
                             "vocabulary); it moves a target by about a third of this in total variation (0.2: "
                             "~0.07, the spec's 0.05-0.1); 0: none", lo=0.0)
        pii: str = param(DEFAULT_RULES, "the detector's rules and the rho each gives, RULE[:SCORE] comma-separated; "
                         f"rules: {', '.join(RULES)} (retort.lm.data.pii); leave digit out for numeric tasks")
        student_temperature: str = param("base", "the student's temperature in the KD term: base (T on every "
                                         "token: only the teacher's targets swing) or swung (tau_t, as the "
                                         "teacher's: the spec's literal loss, which transfers more of what the "
                                         "teacher memorised)", choices=["base", "swung"])
        ce_below: float = param(0.5, "cross-entropy (ce_weight) only on tokens whose rho is below this: a private "
                                "token's own label is private too", lo=0.0)

        def __post_init__(self):
            try:
                parse_rules(self.pii)
            except ValueError as e:
                raise ConfigError(f"method_args.pii={self.pii!r}: {e}") from None
            if self.noise > 0 and infinite_with_noise(self.divergence, self.beta, self.alpha):
                raise ConfigError(f"method_args.divergence={self.divergence} (beta={self.beta}, alpha={self.alpha}) is "
                                  "infinite where the noise empties a class of the target; use forward_kl, jsd "
                                  "with beta < 1, a skew KL with alpha > 0 or tvd, or method_args.noise=0")

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        if cfg.kd_weight == 0 and cfg.ce_weight == 0:
            raise ConfigError("method_args: kd_weight and ce_weight are both 0; nothing to train")
        self.rules = parse_rules(cfg.pii)
        self.run_teacher = LazyTeacher(ctx)
        self._rho: dict[tuple, list[float]] = {}

    def examples(self):
        return data_examples(self.ctx)

    def teacher_needs(self) -> tuple:
        return ({"hidden"},)

    def scores(self, ids) -> list[float]:
        """rho per token of `ids` (the detector's, cached per sequence)."""
        key = tuple(ids)
        if key not in self._rho:
            self._rho[key] = token_scores(self.ctx.tokenizer, list(ids), self.rules) if self.rules else [0.0] * len(ids)
        return self._rho[key]

    def batches(self, plan):
        pad = self.ctx.tokenizer.pad_token_id
        for k, items in self.example_batches(plan):
            batch = collate(items, pad)
            rho = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
            for i, x in enumerate(items):
                rho[i, :len(x.input_ids)] = torch.tensor(self.scores(x.input_ids), dtype=torch.float32)
            # micro-batch k of the run (over every process) seeds its noise: the same after a resume
            yield {**batch, "rho": rho, "noise_seed": k}

    def loss(self, model, batch) -> LossOut:
        teacher = self.run_teacher.open(model)
        return swing_tokens(model, teacher, batch, self.cfg, self.run_teacher.vocab, seed=self.ctx.run.seed)


def swing_tokens(model, teacher, batch, c, vocab: int, *, seed: int = 0) -> LossOut:
    """The summed swing loss over the label tokens of `batch` (with `rho` per token and its
    `noise_seed`), the student `model` and a teacher with hidden states; `c` a `Swing.Config`."""
    from torch.utils.checkpoint import checkpoint

    labels = batch["labels"][:, 1:]
    sel = labels != IGNORE
    hidden = last_hidden(model, batch)[:, :-1][sel]
    with torch.no_grad():
        t_hidden, t_weight = teacher.hidden(batch)
        t_hidden = t_hidden[:, :-1][sel]
    rho = batch["rho"][:, 1:].to(hidden.device)[sel]
    tau = swing_temperature(rho, c.temperature, c.rise)
    lab = labels[sel]
    weight = unwrap(model).get_output_embeddings().weight
    extra = {"divergence": c.divergence, "beta": c.beta, "alpha": c.alpha, "t_squared": c.t_squared}
    swung = c.student_temperature == "swung"
    base = (seed * 1_000_003 + int(batch.get("noise_seed", 0))) * 1_009

    def chunk_loss(h, w, th, tw, tau_c, rho_c, lab_c, noise_seed):
        z = (h @ w[:vocab].T.to(h.dtype)).float()
        with torch.no_grad():
            zt = (th @ tw[:vocab].T.to(th.dtype)).float()
            eta = None
            if c.noise > 0:  # drawn again, identically, when checkpoint recomputes the chunk in backward
                g = torch.Generator(device=z.device).manual_seed(int(noise_seed))
                eta = target_noise(zt.shape, c.noise, g)
        kd = swing_kd(z, zt, temperature=tau_c, eta=eta, student_temperature=tau_c if swung else c.temperature,
                      **extra).sum()
        if c.ce_weight:
            ce_rows = torch.nn.functional.cross_entropy(z, lab_c, reduction="none")
            ce = torch.where(rho_c < c.ce_below, ce_rows, torch.zeros_like(ce_rows)).sum()
        else:
            ce = z.new_zeros(())
        return c.kd_weight * kd + c.ce_weight * ce, kd.detach(), ce.detach()

    n = int(lab.numel())
    step = c.chunk or max(8, (1 << 22) // max(1, vocab))
    loss = hidden.sum() * 0.0  # connected to the graph: an all-masked batch still backpropagates (zeros)
    kd_sum = ce_sum = 0.0
    for i, start in enumerate(range(0, n, step)):
        r = slice(start, start + step)
        part, kd, ce = checkpoint(chunk_loss, hidden[r], weight, t_hidden[r], t_weight, tau[r], rho[r], lab[r],
                                  base + i, use_reentrant=False)
        loss = loss + part
        kd_sum += float(kd)
        ce_sum += float(ce)
    private = float((rho > 0).float().mean()) if n else 0.0
    return LossOut(loss, n, {"kd": kd_sum / max(1, n), "ce": ce_sum / max(1, n), "private": private})


__all__ = ["Swing", "swing_tokens"]

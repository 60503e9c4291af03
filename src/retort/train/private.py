"""DP-SGD for the student (`privacy.*`), with Opacus as the engine: its per-sample gradient hooks
(`GradSampleModule`), its optimizer (`DPOptimizer`: per-record clipping to `max_grad_norm`, Gaussian
noise of std noise_multiplier * max_grad_norm on the sum, division by the expected batch size), its
sampler (`UniformWithReplacementSampler`: each record in a step's batch with probability q) and its
accountants (RDP, PRV). Nothing here clips, noises or accounts by hand.

What the loop does with it, in order:
- `refuse(run, model, method, world)`: before step 0, one line for what DP-SGD cannot train (a
  student with BatchNorm, a method whose loss is not one term per record, modules the method trains
  beside the student, several processes);
- `teacher_warning(run, method)`: the line `retort train` prints when the teacher may have seen the
  private records (README, "Privacy": what the guarantee does not cover);
- `Private.wrap(model, optimizer)`: hooks on the student (GradSampleModule leaves the module in
  place, so the loop, the method, checkpoints and export keep using the student itself) and the
  DPOptimizer around the optimizer `retort.train.optim` built, with the accountant as its step hook;
- `Private.steps(method)`: each optimizer step's micro-batches: one Poisson draw over the method's
  `private_records()`, cut into micro-batches of at most `train.batch_size` (`records_batch`); a
  draw may be empty (the step is then noise alone, as Opacus's data loader makes it);
- `Private.before_step()`: the per-sample gradients of the step's micro-batches as one batch (so
  the optimizer divides by the expected batch once, and the accountant sees the rate q), zero rows
  for an empty draw, and on a segment's first step a check that the per-sample gradients add up to
  the gradient autograd computed (a loss path that bypasses the hooks, such as a fused loss reading
  the output layer's weight directly, would otherwise escape clipping);
- `epsilon()`, `summary()`: epsilon spent so far, and the `privacy` object of summary.json;
- `state()`, `load_state(state)`: the accountant's history and the sampling and noise generators'
  states, in every checkpoint's state.json, so a resumed run draws the same records and the same
  noise as an uninterrupted one.
"""

from __future__ import annotations

import base64
import secrets
import warnings
from collections.abc import Iterator

import torch

from ..errors import ConfigError, require

ACCOUNTANTS = ("rdp", "prv")


def enabled(run) -> bool:
    """Whether the run trains under DP-SGD (a track without a `privacy` section never does)."""
    cfg = getattr(run, "privacy", None)
    return bool(cfg is not None and cfg.enabled)


def _batchnorm(model: torch.nn.Module) -> tuple[str, str] | None:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            return name or "(the model)", type(module).__name__
    return None


def refuse(run, model: torch.nn.Module, method, world: int) -> None:
    """Raise a ConfigError, before step 0, for what DP-SGD cannot train."""
    if world > 1:
        raise ConfigError(f"privacy.*: DP-SGD trains on one process here ({world} were started); Opacus's "
                          "distributed path is not wired into retort's loop: run without a launcher")
    bn = _batchnorm(model)
    if bn is not None:
        raise ConfigError(f"privacy.*: the student has BatchNorm ({bn[0]}: {bn[1]}), which mixes the examples "
                          "of a batch, so no per-example gradient exists; use a student with GroupNorm (e.g. "
                          f"student.name={_gn_hint(run)}; opacus.validators.ModuleValidator.fix swaps it in "
                          "your own model)")
    from opacus.validators import ModuleValidator

    # the loop trains the student in train mode; one loaded from a checkpoint (--resume) comes in
    # eval mode, which Opacus's validator would refuse on its own
    training = model.training
    errors = ModuleValidator.validate(model.train(), strict=False)
    model.train(training)
    if errors:
        raise ConfigError(f"privacy.*: Opacus cannot train this student privately: {str(errors[0]).splitlines()[0]}")
    method.private_records()  # the method refuses here where its loss is not one term per record
    owned = method.owned()
    if owned:
        raise ConfigError(f"privacy.*: method {run.method} trains {', '.join(owned)} beside the student on the "
                          "same records, outside DP-SGD; it cannot train under privacy.*")


def _gn_hint(run) -> str:
    name = str(getattr(getattr(run, "student", None), "name", ""))
    return f"{name}:gn" if name.startswith("resnet") and ":" not in name else "resnet20:gn"


def teacher_warning(run, method) -> str | None:
    """The warning for a private run whose teacher may have seen the private records, or None."""
    cfg = run.privacy
    traces = getattr(getattr(run, "data", None), "source", None) == "traces"
    if not method.teacher_needs() and not traces:
        return None  # no teacher: the records reach the student through DP-SGD only
    name = str(getattr(getattr(run, "teacher", None), "name", "") or "")
    if name.startswith("builtin:"):
        return (f"warning: privacy: the teacher {name} was trained by retort on this task's training data, without "
                "DP; its soft labels carry those records to the student, and the (epsilon, delta) guarantee covers "
                "only the student's weights with respect to its own training records (README, Privacy)")
    if cfg.teacher_public:
        return None
    what = (f"the traces in {run.data.traces} were sampled by a teacher from the training prompts" if traces
            else f"the teacher {name or '(unnamed)'} has unknown provenance")
    return (f"warning: privacy: {what}; the (epsilon, delta) guarantee covers only the student's weights with respect "
            "to its training records, not a teacher fine-tuned on the same data or traces it sampled from the "
            "private prompts. Set privacy.teacher_public=true if it is a public model that never saw them")


class Private:
    """DP-SGD state for one run: see the module docstring."""

    def __init__(self, cfg, *, records: int, batch_size: int, grad_accum: int, steps: int, seed: int,
                 device: torch.device):
        require("opacus", "privacy", "privacy.*")
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier

        if records < 1:
            raise ConfigError("privacy.*: the method has no private records to train on")
        self.cfg, self.records, self.micro = cfg, records, batch_size
        self.expected_batch = batch_size * grad_accum
        if self.expected_batch > records:
            raise ConfigError(f"privacy.*: the expected batch train.batch_size x train.grad_accum = {self.expected_batch}"
                              f" exceeds the {records} private records; lower it (the sampling rate q = batch / "
                              "records must be at most 1)")
        self.sample_rate = self.expected_batch / records
        self.delta = cfg.delta if cfg.delta is not None else 1.0 / records
        if cfg.noise_multiplier is not None:
            self.noise_multiplier = float(cfg.noise_multiplier)
        else:
            try:
                self.noise_multiplier = float(get_noise_multiplier(
                    target_epsilon=cfg.target_epsilon, target_delta=self.delta, sample_rate=self.sample_rate,
                    steps=steps, accountant=cfg.accountant))
            except ValueError as e:
                raise ConfigError(f"privacy.target_epsilon={cfg.target_epsilon}: {e} (q={self.sample_rate:.4g}, "
                                  f"{steps} steps, delta={self.delta:.3g})") from None
        self.accountant = create_accountant(cfg.accountant)
        # the two random streams DP-SGD needs, apart from the run's others: which records each step
        # draws, and the noise; both carried by checkpoints (`state`)
        # (with secret_noise both from the OS: the accountant's amplification by sampling assumes no
        # one knows which records a step drew, and the noise must not be regenerable from the config)
        seeds = (secrets.randbits(63), secrets.randbits(63)) if cfg.secret_noise else \
            (seed * 1_000_003 + 17, seed * 1_000_003 + 29)
        self.sample_gen = torch.Generator().manual_seed(seeds[0])
        self.noise_gen = torch.Generator(device=device).manual_seed(seeds[1])
        self.hooks = None
        self.optimizer = None
        self.checked = False

    # ------------------------------------------------------------------ the student and its optimizer
    def wrap(self, model: torch.nn.Module, optimizer):
        """Per-sample gradient hooks on `model` (left in place: callers keep using it) and the
        DPOptimizer around `optimizer`; returns the optimizer to step."""
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        # loss_reduction="sum": a method's loss is a sum of one term per record, so each record's
        # gradient is its own term's; DPOptimizer's "mean" then divides the noisy sum by the expected batch
        # torch warns at every backward that the first layer's input needs no gradient: Opacus's
        # hooks are full backward hooks on every layer, and that is expected
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        self.hooks = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier,
                                     max_grad_norm=self.cfg.max_grad_norm, expected_batch_size=self.expected_batch,
                                     loss_reduction="mean", generator=self.noise_gen, secure_mode=self.cfg.secret_noise)
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        return self.optimizer

    def close(self) -> None:
        """Take the hooks off the student (the exported model is a plain module again)."""
        if self.hooks is not None:
            self.hooks.remove_hooks()
            for p in self.params:
                for attr in ("grad_sample", "summed_grad", "_forward_counter"):
                    if hasattr(p, attr):
                        delattr(p, attr)
            self.hooks = None

    # ------------------------------------------------------------------ data
    def draw(self) -> list[int]:
        """One step's records: Poisson (each in with probability q, Opacus's sampler), or with
        `privacy.poisson=false` the expected batch drawn without replacement."""
        if not self.cfg.poisson:
            return sorted(torch.randperm(self.records, generator=self.sample_gen)[:self.expected_batch].tolist())
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        sampler = UniformWithReplacementSampler(num_samples=self.records, sample_rate=self.sample_rate,
                                                generator=self.sample_gen, steps=1)
        return next(iter(sampler))

    def steps(self, method) -> Iterator[list[dict]]:
        """Each optimizer step's micro-batches (possibly none), for ever."""
        while True:
            rows = self.draw()
            yield [method.records_batch(torch.tensor(rows[i:i + self.micro], dtype=torch.long))
                   for i in range(0, len(rows), self.micro)]

    # ------------------------------------------------------------------ the step
    def before_step(self) -> None:
        """Ready the per-sample gradients for the DPOptimizer's step (see the module docstring)."""
        rows = 0
        for p in self.params:
            gs = getattr(p, "grad_sample", None)
            if isinstance(gs, list):
                p.grad_sample = gs = torch.cat(gs, 0)
            if gs is not None:
                rows = gs.shape[0]
        for p in self.params:
            if getattr(p, "grad_sample", None) is None:
                if p.grad is not None:
                    raise ConfigError(f"privacy.*: a parameter of shape {tuple(p.shape)} has a gradient but no "
                                      "per-sample gradient: the method's loss reaches it outside a module Opacus "
                                      "hooks (a fused loss reading the weight directly); it cannot train under DP")
                # a weight the step did not use, or an empty draw (noise alone): zero per-record rows
                p.grad_sample = p.new_zeros((rows, *p.shape))
        if not self.checked:
            self._check_sums()
            self.checked = True

    def _check_sums(self) -> None:
        for p in self.params:
            if p.grad is None or p.grad_sample.shape[0] == 0:
                continue
            total = p.grad_sample.sum(0).to(p.grad.dtype)
            if (total - p.grad).norm() > 1e-3 * (p.grad.norm() + 1e-6):
                raise ConfigError(f"privacy.*: the per-sample gradients of a parameter of shape {tuple(p.shape)} do not "
                                  "add up to its gradient: part of the loss reaches it outside the hooks Opacus "
                                  "sees (a fused loss reading the weight directly, or a term mixing records), so "
                                  "clipping would not bound a record's influence; this method cannot train under DP")

    # ------------------------------------------------------------------ accounting
    @property
    def steps_taken(self) -> int:
        return sum(int(n) for _, _, n in self.accountant.history)

    def epsilon(self) -> float:
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.delta))

    def summary(self) -> dict:
        """summary.json's `privacy` object (and the exported model's privacy.json)."""
        return {"epsilon": self.epsilon(), "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": self.cfg.max_grad_norm, "sample_rate": self.sample_rate,
                "steps": self.steps_taken, "accountant": self.cfg.accountant,
                "target_epsilon": self.cfg.target_epsilon, "poisson": self.cfg.poisson,
                "secret_noise": self.cfg.secret_noise,
                "expected_batch_size": self.expected_batch, "records": self.records,
                "unit": "one training record (a row the method reads); the guarantee covers the student's "
                        "weights, not the teacher, the data it generated, the eval set or the logged metrics"}

    def state(self) -> dict:
        """JSON: the accountant's history and the two generators' states."""
        return {"accountant": {"mechanism": self.accountant.mechanism(),
                               "history": [list(h) for h in self.accountant.history]},
                "sample_rng": _b64(self.sample_gen.get_state()), "noise_rng": _b64(self.noise_gen.get_state())}

    def load_state(self, state: dict | None, where: str) -> None:
        if not state:
            raise ConfigError(f"--resume: {where} holds no privacy state (it was saved without privacy.*)")
        acc = state["accountant"]
        if acc["mechanism"] != self.accountant.mechanism():
            raise ConfigError(f"--resume: {where} was accounted with {acc['mechanism']}, this run uses "
                              f"{self.accountant.mechanism()}")
        self.accountant.history = [tuple(h) for h in acc["history"]]
        self.sample_gen.set_state(_unb64(state["sample_rng"]))
        self.noise_gen.set_state(_unb64(state["noise_rng"]))


def model_privacy(name) -> dict | None:
    """The `privacy` object a model trained under DP-SGD carries (its directory's privacy.json, as
    the loop exports it), or None: what `retort eval` shows as the epsilon column."""
    import json
    from pathlib import Path

    path = Path(str(name)) / "privacy.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("epsilon"), (int, float)) else None


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


__all__ = ["ACCOUNTANTS", "Private", "enabled", "model_privacy", "refuse", "teacher_warning"]

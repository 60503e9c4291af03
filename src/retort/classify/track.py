"""The classifier track: datasets that need no download (or a user's), MLP/CNN/CIFAR-ResNet/timm/
torchvision students, a trained or shipped teacher, the classifier KD methods, and evaluation by
top-1 accuracy, calibration and agreement with the teacher."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, ModelError
from ..track import Track, method_config
from . import models
from .config import ClassifyEvalRun, ClassifyRun
from .data import load_dataset
from .models import check_fits, is_saved, resolve
from .methods import METHODS, ClassifyContext


class ClassifyTrack(Track):
    name = "classify"
    methods = METHODS
    run_config = ClassifyRun
    eval_config = ClassifyEvalRun
    demo_out = "runs/demo-classify"

    def __init__(self):
        self._data: dict = {}

    def get_task(self, cfg):
        key = (str(cfg.name), cfg.val_fraction)
        if key not in self._data:  # the loop and the student loader both ask; MNIST takes seconds to read
            self._data = {key: load_dataset(cfg)}
        return self._data[key]

    def check_eval(self, task, run) -> None:
        if len(task.y.get("test", [])) == 0:
            raise ConfigError(f"{task.name}: the test split is empty")

    def load_student(self, run, ckpt, seed: int):
        import torch

        if ckpt is not None:
            model, meta = models.load(str(ckpt / "model"))
            return model.train(), meta
        data = self.get_task(run.task)
        name = resolve(run.student.name, data.name)
        if is_saved(name):  # start from a trained classifier (self-distillation from a checkpoint)
            model, meta = models.load(name)
            check_fits(meta, data, "student")
            if meta.get("subclasses", 1) != self._subclasses(run):
                raise ModelError(f"student.name={name}: its head scores {meta.get('subclasses', 1)} subclass(es) "
                                 f"per class; method {run.method} needs {self._subclasses(run)}")
            return model.train(), meta
        sub = self._subclasses(run)
        torch.manual_seed(seed)
        model = models.build(name, data.input_shape, data.n_classes, sub)
        meta = {"arch": name, "input_shape": list(data.input_shape), "n_classes": data.n_classes,
                "dataset": data.name, "classes": data.classes}
        if sub > 1:
            meta["subclasses"] = sub
        return model.train(), meta

    def _subclasses(self, run) -> int:
        """Subclasses per class the method wants the student's head to score (LELP's S), else 1:
        the track's key `subclasses` of `Method.student_settings`."""
        cfg = method_config(run, self)
        return self.methods[run.method].student_settings(cfg, self.get_task(run.task), {"subclasses": 1})["subclasses"]

    def rows_per_batch(self, run) -> int:
        return run.train.batch_size * 64

    def context(self, run, task, processor, device, say):
        def load_teacher():
            model, meta = models.load(resolve(run.teacher.name, task.name))
            check_fits(meta, task, "teacher")
            return model, meta

        return ClassifyContext(run=run, data=task, device=device, log=say, load_teacher=load_teacher)

    def check_method(self, run, method) -> None:
        if not method.teacher_needs():
            return
        name = resolve(run.teacher.name, run.task.name)
        if name != "ccexam:mnist":
            cfg = Path(name) / "config.json"
            if not cfg.is_file():
                raise ModelError(f"teacher.name={run.teacher.name}: not a saved retort classifier (no {cfg}); "
                                 "method " f"{run.method} needs a teacher's logits")
            meta = json.loads(cfg.read_text())
        else:
            meta = {"n_classes": 10, "input_shape": [1, 28, 28], "source": "ccexam:mnist"}
        check_fits(meta, method.ctx.data, "teacher")

    def save_checkpoint_model(self, model, processor, path, state_dict=None) -> None:
        models.save(model, path, processor, state_dict)

    def export(self, model, processor, path, state_dict=None) -> None:
        models.save(model, path, processor, state_dict)

    def train_evaluator(self, run):
        from .evaluate import run_evaluator

        return run_evaluator(run)

    # ------------------------------------------------------------------ the other commands
    def evaluate(self, run, targets, options, console):
        from .evaluate import evaluate_models, results_table

        targets = targets or [(run.model.name, run.model.name)]
        rows = dict(evaluate_models(run, targets, options.get("fidelity_to")))
        console.print(results_table(rows, f"{run.task.name}, {run.eval.split} split"))
        return rows

    def audit(self, run, targets, options, console):
        from .audit import audit_models

        return audit_models(run, targets, options, console)

    def teacher_config(self, config_file=None, overrides=None):
        from .teacher import teacher_config

        return teacher_config(config_file, overrides)

    def ensure_teacher(self, config_file=None, overrides=None, *, force=False, console=None):
        from .teacher import ensure_teacher

        return ensure_teacher(config_file, overrides, force=force, console=console)

    def demo(self, out, console=None, methods=None, seed=0):
        from .demo import run_demo

        return run_demo(out, console=console, methods=methods, seed=seed)


TRACK = ClassifyTrack()

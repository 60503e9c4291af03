"""The diffusion track: data that needs no download (2-D mixtures with exact teachers, digits,
MNIST), denoisers (an MLP for points, a diffusers U-Net for images) under one EDM convention, a
trained or exact teacher, the few-step distillation methods, and evaluation by distribution
metrics with collapse detectors. The model the loop trains is the generator; its "processor" is
its metadata (data, noise levels, sampler), which goes into every saved model's retort.json."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..track import Track, method_config
from . import models
from .config import DiffuseEvalRun, DiffuseRun
from .data import load_data
from .methods import METHODS, DiffuseContext
from .nets import ExactDenoiser
from .sampling import karras, student_sigmas


class DiffuseTrack(Track):
    name = "diffuse"
    methods = METHODS
    run_config = DiffuseRun
    eval_config = DiffuseEvalRun
    demo_out = "runs/demo-diffuse"

    def __init__(self):
        self._data: dict = {}

    def get_task(self, cfg):
        key = str(cfg.name)
        if key not in self._data:
            self._data = {key: load_data(key)}
        return self._data[key]

    def _sampling(self, run, data) -> dict:
        if run.method == "denoise":  # a teacher: its own many-step sampler
            return {"sampler": "heun", "sigmas": karras(run.teacher.steps, sigma_max=data.sigma_max).tolist(),
                    "nfe": 2 * run.teacher.steps - 1}
        # the method may change the levels (`Method.student_settings`: given `steps`, it may set `sigmas`)
        cfg = method_config(run, self)
        settings = {"steps": run.student.steps, "sigmas": student_sigmas(run.student.steps, data.sigma_max)}
        sig = self.methods[run.method].student_settings(cfg, data, settings)["sigmas"]
        hi, lo = data.sigma_max ** (1 / 7), 0.002 ** (1 / 7)
        # diffusers' EDMEulerScheduler.set_timesteps(sigmas=...) takes positions on its Karras ramp (0 = sigma_max)
        return {"sampler": "renoise", "sigmas": sig, "nfe": run.student.steps,
                "diffusers_ramp": [round((hi - s ** (1 / 7)) / (hi - lo), 6) for s in sig]}

    def _teacher_network(self, run, data):
        name = models.resolve(run.teacher.name, data.name)
        model, meta = models.load(name)
        models.check_fits(meta, data, "teacher")
        return model, meta

    def load_student(self, run, ckpt, seed: int):
        cfg, data = method_config(run, self), self.get_task(run.task)
        cls = self.methods[run.method]
        cls.check_task(cfg, data)
        model, meta = self._load_student(run, ckpt, seed, cls.default_student(cfg, data))
        # MSD: K students routed by class; GDD-I: frozen layers, before the optimizer sees them
        return cls.prepare_student(model, cfg, data, run.seed), meta

    def _load_student(self, run, ckpt, seed: int, default_student):
        import copy

        import torch

        data = self.get_task(run.task)
        meta = {"dataset": data.name, "shape": list(data.shape), "sigma_max": data.sigma_max, "method": run.method,
                "sampling": self._sampling(run, data), "classes": data.classes}
        if ckpt is not None:
            model, _ = models.load(str(ckpt / "model"))
            return model.train(), meta
        name = str(run.student.name)
        if name == "teacher" and default_student:  # onpolicy_dmd: a block-causal student
            name = default_student
        if name == "teacher":
            if run.method == "denoise":
                raise ConfigError("method=denoise trains a network from scratch: give student.name=mlp:W-D or unet")
            model, _ = self._teacher_network(run, data)
            return copy.deepcopy(model).train(), meta
        if name == "builtin:teacher" or Path(name).is_dir():
            model, saved = models.load(models.resolve(name, data.name))
            models.check_fits(saved, data, "student")
            return model.train(), meta
        torch.manual_seed(seed)
        return models.build(name, data).train(), meta

    def rows_per_batch(self, run) -> int:
        return run.train.batch_size * 64

    def describe_student(self, run, trainable: int, total: int):
        name = run.student.name
        if name == "teacher":
            cfg = method_config(run, self)
            name = self.methods[run.method].default_student(cfg, self.get_task(run.task)) or name
        return f"student: {name} ({total:,} parameters), {run.method}, {run.student.steps} step(s)" \
            if run.method != "denoise" else f"teacher network: {run.student.name} ({total:,} parameters)"

    def context(self, run, task, processor, device, say):
        import copy

        cache: dict = {}

        def network():
            if "net" not in cache:
                cache["net"] = self._teacher_network(run, task)[0]
            return cache["net"]

        def teacher():
            if task.mixture is not None and run.teacher.exact:
                return ExactDenoiser(task.mixture, task.n_classes, task.sigma_data)
            return network()

        def teacher_net():
            return copy.deepcopy(network()).train()

        return DiffuseContext(run=run, data=task, device=device, log=say, teacher=teacher, teacher_net=teacher_net,
                              student_sigmas=processor["sampling"]["sigmas"])

    def check_method(self, run, method) -> None:
        """Load the teacher's network now (a clear error before step 0) where the run needs it: as the
        real score (no exact teacher), as the student's start, or as the critic's."""
        data = method.ctx.data
        exact = data.mixture is not None and run.teacher.exact
        if method.teacher_needs() and not exact or str(run.student.name) == "teacher" or \
                method.needs_teacher_weights():
            self._teacher_network(run, data)

    def save_checkpoint_model(self, model, processor, path, state_dict=None) -> None:
        models.save(model, path, processor, state_dict)

    def export(self, model, processor, path, state_dict=None) -> None:
        models.save(model, path, processor, state_dict)

    def train_evaluator(self, run):
        from .evaluate import run_evaluator

        return run_evaluator(run)

    # ------------------------------------------------------------------ the other commands
    def evaluate(self, run, targets, options, console):
        from .compare import evaluate_models, results_table

        if options.get("fidelity_to"):
            raise ConfigError("--fidelity-to measures agreement of language models and classifiers; not for "
                              "track=diffuse")
        rows = evaluate_models(run, targets, say=console.print, hybrid_with_teacher=options.get("hybrid"))
        console.print(results_table(rows))
        return rows

    def results_json(self, results: dict) -> str:
        import json

        return json.dumps(results)  # compact: each row carries its samples

    def teacher_config(self, config_file=None, overrides=None):
        from .teacher import teacher_config

        return teacher_config(config_file, overrides)

    def ensure_teacher(self, config_file=None, overrides=None, *, force=False, console=None):
        from .teacher import ensure_teacher

        return ensure_teacher(config_file, overrides, force=force, console=console)

    def demo(self, out, console=None, methods=None, seed=0):
        from .demo import run_demo

        return run_demo(out, console=console, methods=methods, seed=seed)

    def config_classes(self) -> dict:
        # `retort config teacher --track diffuse` shows the digits U-Net teacher (the ring's is an MLP)
        return {**super().config_classes(),
                "teacher": lambda config_file, overrides: self.teacher_config(config_file,
                                                                              ["task.name=digits", *overrides])}


TRACK = DiffuseTrack()

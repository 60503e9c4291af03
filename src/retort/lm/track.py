"""The language-model track: causal-LM students from presets, directories, GGUF files or the hub
(optionally with LoRA), reasoning tasks, the LM methods, and teachers behind `retort.lm.teachers`."""

from __future__ import annotations

from pathlib import Path

from .config import EvalRun, ModelConfig, TracesRun, TrainRun
from ..errors import ModelError
from .methods import METHODS, MethodContext
from .models import load_model, lora, save_model
from .tasks import get_task, require_examples
from .teachers import check_capabilities, open_teacher
from ..contract import Method
from ..track import Track


def _program_set(traces) -> bool:
    """Whether the trace set at `traces` was made with `program=python` (its rows are programs)."""
    import json
    from pathlib import Path

    try:
        return json.loads((Path(traces) / "manifest.json").read_text())["params"].get("program") == "python"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _agent_of(traces):
    """The `AgentConfig` a trace set made with `agent=code` was made with (None: not an agent set)."""
    import json
    from pathlib import Path

    from .config import AgentConfig

    try:
        params = json.loads((Path(traces) / "manifest.json").read_text())["params"].get("agent")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(params, dict) or params.get("kind") != "code":
        return None
    return AgentConfig(**{k: v for k, v in params.items() if k in AgentConfig.__dataclass_fields__})


class LMTrack(Track):
    name = "lm"
    methods = METHODS
    run_config = TrainRun
    eval_config = EvalRun
    demo_out = "runs/demo"
    real_demo_out = "runs/demo_real"  # `retort demo --real`

    def train_evaluator(self, run):
        """`retort.lm.eval.evaluate`, plus fidelity to the run's teacher when it has a local one
        (`eval.fidelity`; the teacher and its greedy answers loaded at the first evaluation). A
        student of a program trace set (`traces program=python`) is evaluated by running its programs."""
        from .eval import evaluate

        name = fidelity_reference(run)
        cache: dict = {}
        programs = run.data.source == "traces" and _program_set(run.data.traces)
        agent = _agent_of(run.data.traces) if run.data.source == "traces" else None

        def ev(model, tok, task):
            if agent is not None:  # a student of agent traces is evaluated as an agent, as its teacher acted
                task.agent = agent
            if programs and getattr(task, "program", None) != "python":
                from .config import ProgramConfig
                from .tasks.programs import as_program

                task = cache.setdefault("program_task", as_program(task, ProgramConfig()))
            if name is None:
                return evaluate(model, tok, task, run.eval)
            if "ref" not in cache:
                from dataclasses import replace

                from .eval import reference

                # the run's own teacher where its method has it open (`open_teacher` shares it): a
                # second copy of its weights would be the run's peak memory (issue 29)
                teacher = open_teacher(replace(run.teacher, name=name), seed=run.seed,
                                       device=next(model.parameters()).device)
                cache["ref"] = reference("teacher", teacher.model, teacher.tokenizer, task, run.eval)
            return evaluate(model, tok, task, run.eval, reference=cache["ref"])
        return ev

    def get_task(self, cfg):
        return get_task(cfg)

    def check_eval(self, task, run) -> None:
        require_examples(task, run.eval.split, run.eval.n, "the run's evaluation", run.eval.seed)
        if getattr(task, "program", None) == "python" or (run.data.source == "traces" and _program_set(run.data.traces)) \
                or getattr(task, "agent", None) or (run.data.source == "traces" and _agent_of(run.data.traces)):
            from ..sandbox import check

            check()  # its evaluation runs programs: refused now, not after training

    def load_student(self, run, ckpt, seed: int):
        model, tok = self._load_student(run, ckpt, seed)
        if run.student.grad_checkpointing:
            _checkpoint_layers(model, run)
        cls = self.methods[run.method]
        if cls.prepare_student.__func__ is Method.prepare_student.__func__:
            return model, tok
        # the method's own form of the student (System-1.5's routed student), before the optimizer sees it
        return cls.prepare_student(model, self.method_config(run), get_task(run.task), seed), tok

    def _load_student(self, run, ckpt, seed: int):
        lora.check_available(run.student.lora)
        max_len = max(512, run.data.max_len)
        if ckpt is not None and run.student.lora.r:
            # a LoRA checkpoint holds the adapter only: the base is loaded as the run first loaded it
            model, tok = load_model(run.student, seed=seed, max_len=max_len)
            return lora.resume(model, ckpt / "model"), tok
        if ckpt is not None:
            return load_model(ModelConfig(name=str(ckpt / "model"), dtype=run.student.dtype))
        if run.student.keep_layers and run.student.prune_check:
            model, tok = self._pruned_and_scored(run, seed, max_len)
        else:
            model, tok = load_model(run.student, seed=seed, max_len=max_len)
        return (lora.wrap(model, run.student.lora) if run.student.lora.r else model), tok

    def _pruned_and_scored(self, run, seed: int, max_len: int):
        """The pruned student of a new run, scored before training beside the model it was cut from
        on `student.prune_check` eval prompts: whether the copy starts sane, said in one line
        (`describe_student`) before step 0."""
        from dataclasses import replace

        from .eval import evaluate
        from .models.load import keep_layers

        import torch

        model, tok = load_model(replace(run.student, keep_layers=0), seed=seed, max_len=max_len)
        task = get_task(run.task)
        cfg = replace(run.eval, n=min(run.eval.n, run.student.prune_check))
        model.to("cuda" if torch.cuda.is_available() else "cpu")  # the loop places it for training later
        full_eval = evaluate(model, tok, task, cfg, n_samples_kept=0)
        full, n = full_eval["accuracy"], full_eval["n"]  # a small file's split may hold fewer
        model = keep_layers(model, run.student.keep_layers, tok, run.student.prune)
        pruned = evaluate(model, tok, task, cfg, n_samples_kept=0)["accuracy"]
        model.to("cpu")
        kept = model.config.retort_kept_layers
        share = f"{pruned / full:.0%} of it" if full else "the full model scores 0"
        self._start_note = (f"the pruned copy ({len(kept)} of {model.config.retort_layers_before} layers of "
                            f"{run.student.name}: {kept}) scores {pruned:.3f} on {n} {cfg.split} prompts of "
                            f"{run.task.name}, the full model {full:.3f} ({share}), before training")
        return model, tok

    def param_counts(self, model) -> tuple[int, int]:
        return lora.param_counts(model)

    def rows_per_batch(self, run) -> int:
        return run.train.batch_size * run.data.max_len  # tokens

    def describe_student(self, run, trainable: int, total: int):
        lines = [self.__dict__.pop("_start_note", None)]  # the pruned copy's score, from `load_student`
        if run.student.lora.r:
            lines.append(f"lora r={run.student.lora.r}: training {trainable:,} of {total:,} parameters "
                         f"({100 * trainable / total:.2f}%)")
        return "\n".join(line for line in lines if line) or None

    def context(self, run, task, processor, device, say):
        return MethodContext(
            run=run, task=task, tokenizer=processor, device=device, log=say,
            load_teacher=lambda: open_teacher(run.teacher, seed=run.seed, device=device),
            load_initial_student=lambda: load_model(run.student, seed=run.seed, max_len=max(512, run.data.max_len)))

    def check_method(self, run, method) -> None:
        check_capabilities(run.method, method.teacher_needs(), run.teacher.name)

    def save_checkpoint_model(self, model, processor, path, state_dict=None) -> None:
        # a LoRA student's checkpoint holds the adapter only; LoRA never targets the embeddings (a
        # config check), so PEFT need not look the base model up to decide whether to save them
        extra = {"save_embedding_layers": False} if lora.is_lora(model) else {}
        if state_dict is not None:
            extra["state_dict"] = state_dict
        model.save_pretrained(path, safe_serialization=True, **extra)
        processor.save_pretrained(path)

    def export(self, model, processor, path, state_dict=None) -> None:
        # LoRA: the adapters merged in, in place (the run is over): a plain model for `retort eval`;
        # the adapter alone first, beside it (RUN_DIR/adapter), for several adapters on one base
        # (`retort eval --lorid`)
        if state_dict is None:
            if lora.is_lora(model):
                self.save_checkpoint_model(model, processor, Path(path).parent / "adapter")
            save_model(lora.merge(model), processor, path)
            return
        if lora.is_lora(model):  # merging needs the whole weights in one process
            raise ModelError("a LoRA student trained with sharded (FSDP) weights: export its adapter from the last "
                             "checkpoint (ckpt/step-N/model) and merge it on one process")
        model.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(path)

    # ------------------------------------------------------------------ the other commands
    def evaluate(self, run, targets, options, console):
        from .compare import evaluate_models

        return evaluate_models(run, targets, options, console)

    def audit(self, run, targets, options, console):
        from .audit import audit_models

        return audit_models(run, targets, options, console)

    def teacher_config(self, config_file=None, overrides=None):
        from .teacher import teacher_config

        return teacher_config(config_file, overrides)

    def ensure_teacher(self, config_file=None, overrides=None, *, force=False, console=None):
        from .teacher import ensure_teacher

        return ensure_teacher(config_file, overrides, force=force, console=console)

    def demo(self, out, console=None, methods=None, seed=0, real=None):
        if real is not None:  # `retort demo --real`: packaged real models, at size `real`
            from .demo_real import run_real_demo

            return run_real_demo(out, console=console, size=real, seed=seed)
        from .demo import run_demo

        return run_demo(out, console=console, methods=methods or ["answers", "sft"], seed=seed)

    def config_classes(self) -> dict:
        return {**super().config_classes(), "traces": TracesRun}


TRACK = LMTrack()


def _checkpoint_layers(model, run) -> None:
    """`student.grad_checkpointing`: the decoder layers' activations recomputed in the backward
    (non-reentrant, so a LoRA student's frozen inputs need no gradient)."""
    from ..errors import ConfigError

    base = model.get_base_model() if lora.is_lora(model) else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"student.grad_checkpointing: {type(base).__name__} does not support gradient checkpointing")
    if getattr(getattr(run, "privacy", None), "enabled", False):
        raise ConfigError("student.grad_checkpointing with privacy.*: Opacus's per-sample hooks would see every "
                          "recomputed layer twice; train under DP-SGD without it")
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x's name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def fidelity_reference(run):
    """The model a training run's evaluations measure fidelity to (`eval.fidelity`): the teacher
    of the traces it learns from (data.source=traces), else its method's teacher when the method
    uses one; None when there is none, or it is not a local model (a server, a trace store)."""
    from ..contract import Method
    from .data.traces import read_manifest
    from .teachers import capabilities_of

    if not run.eval.fidelity:
        return None
    name = None
    if run.data.source == "traces" and run.data.traces:
        try:
            params = read_manifest(run.data.traces)["params"]
        except Exception:  # a set that cannot be read is reported by the data loader, not here
            params = {}
        while "teacher" not in params and isinstance(params.get("source_params"), dict):
            params = params["source_params"]  # a filtered set names its source's teacher
        name = (params.get("teacher") or {}).get("name")
    cls = METHODS.get(run.method)
    if name is None and cls is not None and cls.teacher_needs is not Method.teacher_needs:
        name = run.teacher.name  # a method that declares what it needs of a teacher uses one
    if not name or "hidden" not in capabilities_of(name):
        return None
    return name

"""The one training loop: accelerate, global token normalisation, warmup+cosine, clipping,
checkpoints and exact resume, NaN stop, metrics, progress. Methods plug in through
`retort.contract.Method` and tracks through `retort.track.Track`; nothing here knows what a method
computes.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import save_config, saved_config_diff
from .. import threads
from ..progress import ProgressLines
from ..errors import ConfigError, RetortError, require
from ..contract import STUDENT, BatchPlan
from ..lock import hold
from ..paths import atomic_write_text, entries
from ..track import get_track, method_config
from . import launch
from . import private as dp
from .checkpoint import (latest_checkpoint, load_method_state, load_training_state, resumable_checkpoint,
                         save_checkpoint, sharded, use_accelerate_state)
from .ema import WeightEMA
from .optim import make_optimizer, make_scheduler


class NonFiniteLoss(RetortError):
    pass


def _precision(choice: str) -> str:
    if choice == "fp32":
        return "no"
    if choice == "bf16":
        return "bf16"
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


class MetricsLog:
    """metrics.jsonl, one JSON object per line. On resume from step S, lines past S are dropped, and
    so are the eval rows at S when S is the run's last step (the final evaluation, done again)."""

    def __init__(self, path: Path, resume_step: Optional[int], enabled: bool, final: bool = False):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if resume_step is not None and path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if not isinstance(row, dict):
                    continue
                step = row.get("step", 0)
                if step < resume_step or step == resume_step and not (final and "loss" not in row):
                    kept.append(line)
        path.write_text("".join(k + "\n" for k in kept))

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


def _prepare_run_dir(run_dir: Path, run, resume: bool, log) -> bool:
    """Check `out` before anything is written: a new run needs a new or empty directory (retort
    never writes into one it did not make); an existing run needs --resume and the same config
    (`out` itself excepted: a run directory may be moved). Returns whether a run is there."""
    from ..paths import output_dir

    output_dir(run_dir, "out")
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        if run_dir.is_dir() and entries(run_dir):
            raise ConfigError(f"out={run_dir}: the directory is not empty and holds no retort run (no config.yaml); "
                              "choose a new or empty directory")
        if resume:
            log(f"--resume: no run in {run_dir} yet; starting a new one")
        return False
    if not resume:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another out=")
    try:
        diff = saved_config_diff(cfg_file, run)
    except Exception as e:  # a config.yaml damaged or edited by hand
        raise ConfigError(f"--resume: {cfg_file} is not a readable retort config ({e})") from None
    if diff:
        raise ConfigError(f"--resume: config differs from the run in {run_dir} at {', '.join(diff)}")
    return True


def _finished(run_dir: Path) -> Optional[dict]:
    """The summary of a run that finished (summary.json and model/ written), else None."""
    path = run_dir / "summary.json"
    if not (path.is_file() and (run_dir / "model").is_dir()):
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _progress(total: int, start: int, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), disable=not enabled)
    return prog, prog.add_task("train", total=total, completed=start, info="")


def train(run, *, resume: bool = False, evaluate: Optional[Callable] = None, console=None,
          announce_new: bool = False) -> dict:
    """Train `run.student` with `run.method`; returns a summary dict (also in summary.json).

    `evaluate(model, tokenizer, task) -> dict` is called on the main process every
    `train.eval_every` steps and at the end; other processes wait. A new run that fails before it
    has logged a step or saved a checkpoint (a bad teacher path, a data error found late) leaves no
    run directory behind, so the same command can simply be run again once fixed. `announce_new`:
    say so when `resume` finds no run (the user asked for --resume; the demo and teacher resume by
    default and need not).
    """
    launch.refuse(run)  # FSDP/DeepSpeed without GPUs, a lone process of a multi-machine launch
    run_dir = Path(run.out)
    wrote: list[Path] = []  # what this call created, the only files its cleanup may remove
    threads_before = torch.get_num_threads()
    # one writer per run directory (`retort.lock`): the main process of this run holds it, and a
    # directory the lock made is removed again when a failed new run leaves it empty
    with hold(run_dir, "out") if launch.main_rank() else nullcontext():
        try:
            return _train(run, resume=resume, evaluate=evaluate, console=console, wrote=wrote,
                          announce_new=announce_new)
        except Exception:
            metrics = run_dir / "metrics.jsonl"
            if wrote and latest_checkpoint(run_dir) is None and not (metrics.is_file() and metrics.stat().st_size):
                for path in reversed(wrote):
                    if path.is_dir():
                        if not any(path.iterdir()):
                            path.rmdir()
                    else:
                        path.unlink(missing_ok=True)
            raise
        finally:
            torch.set_num_threads(threads_before)
            threads.pin(0)


def _train(run, *, resume: bool, evaluate: Optional[Callable], console, wrote: list, announce_new: bool) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    opt_cfg = run.train
    track = get_track(run.track)
    mcfg = method_config(run, track)
    run_dir = Path(run.out)
    if opt_cfg.log_with != "none":
        require(opt_cfg.log_with, opt_cfg.log_with, f"train.log_with={opt_cfg.log_with}")
    accelerator = Accelerator(
        mixed_precision=_precision(opt_cfg.precision), cpu=not torch.cuda.is_available(),
        log_with=None if opt_cfg.log_with == "none" else opt_cfg.log_with, project_dir=str(run_dir),
    )
    main = accelerator.is_main_process
    use_accelerate_state(accelerator)

    def say(msg: str) -> None:
        if main and console is not None:
            console.print(msg)

    existing = _prepare_run_dir(run_dir, run, resume, say if announce_new else (lambda msg: None))
    summary = _finished(run_dir) if existing else None
    if summary is not None:
        say(f"{run_dir}: this run finished ({summary.get('steps')} steps); nothing to resume")
        return {**summary, "main_process": main, "already_finished": True}
    if existing and main:
        resumable_checkpoint(run_dir, say)  # damaged checkpoints reported and moved aside
    accelerator.wait_for_everyone()  # every process has checked the run dir before anyone writes to it
    ckpt = latest_checkpoint(run_dir) if existing else None
    set_seed(run.seed)
    task = track.get_task(run.task)
    if evaluate is not None:
        track.check_eval(task, run)
    model, tok = track.load_student(run, ckpt, run.seed)
    trainable, n_params = track.param_counts(model)
    threads.pin(run.threads)
    chosen = threads.auto(n_params, track.rows_per_batch(run), accelerator.device.type)
    if chosen is not None:
        torch.set_num_threads(chosen)
    described = track.describe_student(run, trainable, n_params)
    if described:
        say(described)
    ctx = track.context(run, task, tok, accelerator.device, say)
    method = track.methods[run.method](ctx, mcfg)
    track.check_method(run, method)
    private = None
    if dp.enabled(run):  # DP-SGD (retort.train.private): refused before step 0 where it cannot be
        dp.refuse(run, model, method, accelerator.num_processes)
        warning = dp.teacher_warning(run, method)
        if warning:
            say(warning)
        private = dp.Private(run.privacy, records=method.private_records(), batch_size=opt_cfg.batch_size,
                             grad_accum=opt_cfg.grad_accum, steps=opt_cfg.steps, seed=run.seed,
                             device=accelerator.device)

    optimizer = make_optimizer(model.named_parameters(), opt_cfg)
    scheduler = make_scheduler(optimizer, opt_cfg)
    if private is not None:  # Opacus's per-sample hooks on the student, its DPOptimizer around the optimizer
        optimizer = private.wrap(model, optimizer)
    launch.fit_deepspeed(accelerator, opt_cfg.batch_size)
    model, optimizer = accelerator.prepare(model, optimizer)
    method.bind(lambda: accelerator.unwrap_model(model))
    ema = None
    if opt_cfg.ema > 0:
        if sharded(accelerator):
            raise ConfigError("train.ema: not supported with sharded training (FSDP/DeepSpeed); the average would "
                              "need gathering every step. Set train.ema=0 or train without sharding")
        ema = WeightEMA(accelerator.unwrap_model(model), opt_cfg.ema, opt_cfg.ema_start)
    # modules the method owns (a critic, a projection): each with its own optimizer and schedule
    owned = {}
    for name, spec in method.owned().items():
        if name == STUDENT:
            raise ValueError(f"method {run.method}: a module it owns may not be named {STUDENT!r} (the student's)")
        module = spec.module.to(accelerator.device)
        opt = make_optimizer(module.named_parameters(), opt_cfg, lr=spec.lr, name=spec.optimizer)
        sched = make_scheduler(opt, opt_cfg, spec.schedule)
        module, opt = accelerator.prepare(module, opt)
        owned[name] = (module, opt, sched)
        method.owned_modules[name] = module

    start_step, tokens_seen, time_before, ended_early = 0, 0, 0.0, False
    if ckpt is not None:
        state = load_training_state(ckpt, accelerator=accelerator, optimizer=optimizer, scheduler=scheduler)
        start_step, tokens_seen = state["step"], state.get("tokens", 0)
        time_before, ended_early = state.get("train_time_s", 0.0), state.get("stopped_early", False)
        load_method_state(ckpt, method, owned, accelerator.unwrap_model)
        if private is not None:
            private.load_state(state.get("privacy"), str(ckpt))
        if ema is not None and not ema.load(ckpt):
            raise ConfigError(f"--resume: {ckpt} holds no weight average (train.ema); it was saved without one")
        say(f"resuming {run_dir} from step {start_step} ({ckpt.name})")
    if main:
        if not run_dir.exists():
            wrote.append(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not existing:
            wrote += [run_dir / "config.yaml", run_dir / "metrics.jsonl"]
        save_config(run, run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        launch.check_shared_out(accelerator, run_dir)  # every process writes its part of each checkpoint here
    final_ckpt = ckpt is not None and (start_step >= opt_cfg.steps or ended_early)
    log = MetricsLog(run_dir / "metrics.jsonl", start_step if ckpt is not None else None, main, final=final_ckpt)
    if accelerator.log_with:
        accelerator.init_trackers("retort", config=_flat(asdict(run)))

    plan = BatchPlan(accelerator.process_index, accelerator.num_processes, opt_cfg.grad_accum,
                     opt_cfg.batch_size, start_step, run.seed)
    method.on_step(start_step)
    if private is None:
        batches = method.batches(plan)
        steps = iter(lambda: [next(batches) for _ in range(opt_cfg.grad_accum)], None)
    else:  # one Poisson draw of the private records per step, in micro-batches of at most batch_size
        steps = private.steps(method)
    world = accelerator.num_processes
    device = accelerator.device
    interactive = main and (console.is_terminal if console is not None else False)
    progress, bar = _progress(opt_cfg.steps, start_step, interactive)
    # not a terminal: a line every 30 s or 10% of the steps (`retort.progress`), with loss and lr
    lines = ProgressLines(console, "train", opt_cfg.steps, "steps", done=start_step,
                          enabled=main and not interactive and console is not None)
    last_eval: dict = {}
    t0 = time.time()
    step = start_step
    stopped_early = ended_early  # a run resumed from the checkpoint of its early stop trains no more

    def elapsed() -> float:
        """Train time over every segment of the run (a resumed run adds to its checkpoint's)."""
        return round(time_before + time.time() - t0, 3)

    def checkpoint(step_now):
        save_checkpoint(run_dir, step_now, accelerator=accelerator, model=model, optimizer=optimizer,
                        save_model=lambda m, path, full: track.save_checkpoint_model(m, tok, path, full),
                        scheduler=scheduler, keep=opt_cfg.keep_checkpoints, method=method, owned=owned,
                        state={"tokens": tokens_seen, "train_time_s": elapsed(), "stopped_early": stopped_early,
                               **({"privacy": private.state()} if private is not None else {})},
                        extra=ema.save if ema is not None else None)

    def run_eval(step_now):
        nonlocal last_eval
        if evaluate is None:
            return {}
        if main:
            student = accelerator.unwrap_model(model)
            with ema.applied(student) if ema is not None else _null():
                last_eval = evaluate(student, tok, task)
            log.write({"step": step_now, **{f"eval/{k}": v for k, v in last_eval.items() if isinstance(v, (int, float))}})
        accelerator.wait_for_everyone()
        flag = torch.tensor([last_eval.get("accuracy", 0.0) if main else 0.0,
                             float(bool(last_eval.get("stop"))) if main else 0.0], device=device)
        acc, stop = accelerator.reduce(flag, "sum").tolist()
        return {"accuracy": acc, "stop": bool(stop)}

    model.train()
    with progress:
        while step < opt_cfg.steps and not stopped_early:
            micro = next(steps)
            micro = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in micro]
            local_count = sum(method.count(b) for b in micro)
            counts = accelerator.reduce(torch.tensor([float(local_count)], device=device), "sum")
            # Every micro-batch's summed loss is divided by the *global* count; DDP averages
            # gradients over processes, so multiply by world to get the global-mean gradient. Under
            # DP-SGD the sum itself: the DPOptimizer clips each record's gradient and divides by the
            # expected batch (a count that depends on the draw would itself leak).
            denom = max(float(counts.item()), 1.0)
            scale = 1.0 if private is not None else world / denom
            loss_sum = torch.zeros((), device=device)
            metric_sums: dict[str, float] = {}
            for i, b in enumerate(micro):
                sync = i == len(micro) - 1
                ctx_mgr = accelerator.no_sync(model) if not sync and world > 1 else _null()
                with ctx_mgr, accelerator.autocast():
                    out = method.loss(model, b)
                    accelerator.backward(out.loss * scale)
                loss_sum += out.loss.detach().float()
                for k, v in out.metrics.items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
            global_loss = float(accelerator.reduce(loss_sum, "sum")) / denom
            if not math.isfinite(global_loss):
                last = latest_checkpoint(run_dir)
                raise NonFiniteLoss(
                    f"step {step + 1}: loss is {global_loss}; stopping. Last good checkpoint: "
                    f"{last if last else 'none (no checkpoint was saved yet)'}. Try a lower train.lr or train.clip_grad"
                )
            if private is not None:  # per-record clipping and noise are the DPOptimizer's, not the loop's
                private.before_step()
                grad_norm = torch.tensor(float("nan"))
            else:
                grad_norm = (accelerator.clip_grad_norm_(model.parameters(), opt_cfg.clip_grad)
                             if opt_cfg.clip_grad > 0 else torch.tensor(float("nan")))
            stepping = method.trains(step)  # the others skip this step (a two time-scale rule)
            for name, (module, opt, sched) in [(STUDENT, (model, optimizer, scheduler)), *owned.items()]:
                if name in stepping:
                    if module is not model and opt_cfg.clip_grad > 0:
                        accelerator.clip_grad_norm_(module.parameters(), opt_cfg.clip_grad)
                    opt.step()
                    sched.step()
                else:  # the schedule advances all the same; torch warns of a schedule ahead of its optimizer
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                        sched.step()
                opt.zero_grad(set_to_none=True)
            step += 1
            method.on_step(step)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model), step)
            tokens_seen += int(counts.item())
            if step % opt_cfg.log_every == 0 or step == opt_cfg.steps:
                row = {"step": step, "loss": global_loss, "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm), "tokens": tokens_seen, "time": elapsed(),
                       **_mean_metrics(accelerator, metric_sums, len(micro)),
                       **({"epsilon": private.epsilon()} if private is not None else {})}
                log.write(row)
                if accelerator.log_with:
                    accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
            progress.update(bar, completed=step, info=f"loss {global_loss:.4f}")
            if lines.enabled:
                lines.update(step, f"loss {global_loss:.4f} lr {scheduler.get_last_lr()[0]:.2e}")
            if opt_cfg.eval_every and step % opt_cfg.eval_every == 0 and step < opt_cfg.steps:
                res = run_eval(step)
                acc = res["accuracy"]
                if main and console is not None:
                    console.print(f"step {step}: eval accuracy {acc:.3f}" if "accuracy" in last_eval else
                                  f"step {step}: eval " + " ".join(
                                      f"{k} {v:.4g}" for k, v in list(last_eval.items())[:6]
                                      if isinstance(v, (int, float))))
                if main and console is not None and last_eval.get("warning"):
                    console.print(f"step {step}: warning: {last_eval['warning']}")
                if res["stop"]:  # the evaluator asks to stop (a collapse detector): keep this step's state
                    if main and console is not None:
                        console.print(f"step {step}: stopping: {last_eval.get('stop')}")
                    stopped_early = True
                    checkpoint(step)
                    break
                if opt_cfg.stop_at_accuracy and acc >= opt_cfg.stop_at_accuracy:
                    stopped_early = True
                    checkpoint(step)
                    break
            if opt_cfg.save_every and step % opt_cfg.save_every == 0 and step < opt_cfg.steps:
                checkpoint(step)
    if not stopped_early:
        checkpoint(step)
    if evaluate is not None and (not stopped_early or ended_early):
        run_eval(step)  # an early stop has just evaluated this step, unless this is its resume
    summary = {"steps": step, "tokens": tokens_seen, "train_time_s": round(elapsed(), 2),
               "stopped_early": stopped_early, **({"stop_reason": last_eval["stop"]} if last_eval.get("stop") else {}),
               "eval": last_eval, "main_process": main,
               "trainable_params": trainable, "params": n_params, "threads": torch.get_num_threads(),
               **({"ema": opt_cfg.ema, "ema_start": opt_cfg.ema_start} if ema is not None else {}),
               **({"privacy": private.summary()} if private is not None else {})}
    if private is not None:
        private.close()
    full = accelerator.get_state_dict(model) if sharded(accelerator) else None  # every process joins the gather
    if main:
        if ema is not None:  # the student is its average (the checkpoints keep the raw weights too)
            ema.copy_to(accelerator.unwrap_model(model))
        track.export(accelerator.unwrap_model(model), tok, run_dir / "model", full)
        if private is not None:  # the model carries its guarantee wherever it is copied (`retort eval`)
            atomic_write_text(run_dir / "model" / "privacy.json", json.dumps(summary["privacy"], indent=2))
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    if accelerator.log_with:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return summary


def _mean_metrics(accelerator, sums: dict, n_micro: int) -> dict:
    """A step's method metrics averaged over the micro-batches of every process, so that 2
    processes log what 1 process with twice the accumulation logs. Called on every process."""
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object([(sums, n_micro)])  # objects, not tensors: a process may lack a key
        sums, n_micro = {}, sum(n for _, n in parts)
        for part, _ in parts:
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + v
    return {k: v / max(1, n_micro) for k, v in sums.items()}


def _flat(d: dict, prefix: str = "") -> dict:
    """Dotted keys and scalar values: what trackers' hyper-parameter tables accept."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

"""What a launcher asked of a training run, checked before step 0.

`torchrun` and `accelerate launch` describe a run to its processes through the environment (RANK,
WORLD_SIZE, MASTER_ADDR; ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED and the FSDP_* settings from
an accelerate config file). Several of their combinations do something other than what the user
asked without a word: accelerate trains FSDP and DeepSpeed only on GPUs (on a CPU it falls back to
plain data parallel with every weight on every process), and `accelerate launch` without
--multi_gpu (`--cpu` included) starts one lone process per machine however many it was asked for.
`refuse` turns each into one line before anything is written; `check_shared_out` refuses a run
whose processes do not all see the run directory the main process writes (on several nodes `out`
must be a shared path). `fit_deepspeed` gives DeepSpeed the micro-batch size it cannot read off a
DataLoader here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError

# where launchers put a process's global rank and the number of processes (torchrun; MPI flavours,
# as accelerate reads them)
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
WORLD_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _first_int(env: Mapping[str, str], names, default: int) -> int:
    for name in names:
        if env.get(name, "").strip().isdigit():
            return int(env[name])
    return default


def main_rank(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this is the run's main process (global rank 0), before the Accelerator exists."""
    return _first_int(env, RANK_VARS, 0) == 0


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes")


def refuse(run, *, env: Mapping[str, str] = os.environ, cuda: bool | None = None,
           deepspeed: bool | None = None) -> None:
    """Raise ConfigError when the launcher asked for what this machine or the loop cannot do.
    `cuda` and `deepspeed` (whether there are CUDA GPUs, whether the package imports) are found out
    when not given."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        if deepspeed is None:
            import importlib.util

            deepspeed = importlib.util.find_spec("deepspeed") is not None
        missing = [what for what, ok in (("CUDA GPUs", cuda), ("the deepspeed package", deepspeed)) if not ok]
        if missing:
            raise ConfigError(
                "DeepSpeed (ACCELERATE_USE_DEEPSPEED=true, from an accelerate config such as "
                f"configs/accelerate/deepspeed_zero2.yaml) needs CUDA GPUs and the deepspeed package; this machine "
                f"lacks {' and '.join(missing)}. Launch without the DeepSpeed config (torchrun, or accelerate "
                "launch --multi_gpu) for plain data parallel")
        if run.train.grad_accum > 1:
            # retort accumulates micro-batches itself and accelerate's DeepSpeed engine steps the
            # optimizer after every backward it is not told is mid-accumulation
            raise ConfigError(
                f"train.grad_accum={run.train.grad_accum}: not supported under DeepSpeed (its engine would step after "
                "every micro-batch); set train.grad_accum=1 and raise train.batch_size or the number of processes")
    if _flag(env, "ACCELERATE_USE_FSDP") and not cuda:
        raise ConfigError(
            "FSDP (ACCELERATE_USE_FSDP=true, from an accelerate config such as configs/accelerate/fsdp.yaml) needs "
            "CUDA GPUs: accelerate shards only over accelerator devices, and on this CPU-only machine it would "
            "train unsharded without saying so. Launch without the FSDP config (torchrun, or accelerate launch "
            "--multi_gpu) for plain data parallel")
    if "ACCELERATE_USE_CPU" in env and env.get("MASTER_ADDR") and _first_int(env, WORLD_VARS, 1) == 1 \
            and "LOCAL_RANK" not in env:
        # accelerate's simple launcher (the one without --multi_gpu or a config naming it) marks its
        # process with ACCELERATE_USE_CPU and sets MASTER_ADDR only when asked for several
        # processes or machines, which it does not start itself: with --cpu it leaves them to MPI
        raise ConfigError(
            "accelerate launch started this as a lone process (MASTER_ADDR is set, WORLD_SIZE is not): without "
            "--multi_gpu its launcher starts one process per machine, and with --cpu leaves the others to MPI "
            "(--mpirun_hostfile), so each machine would train alone. Use `accelerate launch --multi_gpu ...` "
            "(torchrun underneath; retort trains on the CPU over gloo where there is no GPU) or torchrun; unset "
            "MASTER_ADDR for a one-process run")


def check_shared_out(accelerator, run_dir: Path) -> None:
    """Every process must see the config.yaml the main process has just written into `run_dir`:
    checkpoints are written by all of them into one directory. Called on every process."""
    import torch

    sees = (Path(run_dir) / "config.yaml").is_file()
    blind = int(accelerator.reduce(torch.tensor([0.0 if sees else 1.0], device=accelerator.device), "sum").item())
    if blind:
        import socket

        here = "" if sees else f", process {accelerator.process_index} on {socket.gethostname()} among them"
        raise ConfigError(
            f"out={run_dir}: {blind} of the run's {accelerator.num_processes} processes cannot see the run directory "
            f"the main process wrote{here}; on several nodes out= must be a path every node shares (NFS, Lustre, "
            "a cluster file system)")


def fit_deepspeed(accelerator, batch_size: int) -> None:
    """accelerate reads DeepSpeed's micro-batch size off a DataLoader given to `prepare`; retort's
    methods make their own batches, so a config that leaves it to accelerate ("auto") gets
    `train.batch_size` here. Nothing happens without DeepSpeed."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin = accelerator.state.deepspeed_plugin
    if plugin.is_auto("train_micro_batch_size_per_gpu"):
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size


__all__ = ["check_shared_out", "fit_deepspeed", "main_rank", "refuse"]

"""What a launcher asks of `retort train` (retort.train.launch), and the shipped accelerate configs
read by accelerate's own loader and launcher. The launches themselves, two node ranks at a time,
are in test_slow_multinode.py."""

from pathlib import Path

import pytest
from conftest import tiny_overrides

from retort.cli import main
from retort.config import load_config
from retort.errors import ConfigError
from retort.lm.config import TrainRun
from retort.train.launch import main_rank, refuse

ACCELERATE_CONFIGS = Path(__file__).parent.parent / "configs" / "accelerate"


def _launcher_args(config: Path, *extra: str):
    """`accelerate launch --config_file CONFIG ...` as accelerate's launcher reads it (the config
    file's values filled into its arguments, and checked)."""
    from accelerate.commands.launch import (
        _validate_launch_command,
        launch_command_parser,
    )

    args = launch_command_parser().parse_args(["--config_file", str(config), *extra, "-m", "retort.cli", "train"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_shipped_accelerate_configs_load_with_accelerates_loader():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    found = sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml"))
    assert found == ["deepspeed_zero2.yaml", "fsdp.yaml", "multi_node.yaml"]
    options = {a.dest for a in launch_command_parser()._actions}
    kinds = {}
    for path in ACCELERATE_CONFIGS.glob("*.yaml"):
        assert path.read_text().startswith("# accelerate launch --config_file configs/accelerate/" + path.name)
        cfg = load_config_from_file(str(path))  # unknown top-level keys raise here
        kinds[path.name] = str(cfg.distributed_type).split(".")[-1]
        # the plugin sections are copied onto the launcher's arguments by name: a key it has no
        # option for would be dropped without a word
        for key in [*cfg.fsdp_config, *cfg.deepspeed_config]:
            assert key in options, f"{path.name}: {key} is not an accelerate launch option"
    assert kinds == {"deepspeed_zero2.yaml": "DEEPSPEED", "fsdp.yaml": "FSDP", "multi_node.yaml": "MULTI_GPU"}


def test_fsdp_config_fully_shards_and_wraps_each_decoder_layer(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import ShardingStrategy

    from retort.lm.config import ModelConfig
    from retort.lm.models import load_model

    args, _ = _launcher_args(ACCELERATE_CONFIGS / "fsdp.yaml")
    assert args.use_fsdp
    for key, value in prepare_multi_gpu_env(args).items():  # what the launched processes read
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert str(plugin.state_dict_type).endswith("FULL_STATE_DICT")
    model, _ = load_model(ModelConfig(name="preset:nano"), seed=0)
    plugin.set_auto_wrap_policy(model)
    layer = type(model.model.layers[0]).__name__
    assert plugin.transformer_cls_names_to_wrap == [layer] == ["LlamaDecoderLayer"]


def test_deepspeed_config_is_zero_stage_2(monkeypatch):
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults = _launcher_args(ACCELERATE_CONFIGS / "deepspeed_zero2.yaml")
    assert args.use_deepspeed
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as `launch_command` does
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    ds = DeepSpeedPlugin().deepspeed_config
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_accumulation_steps"] == 1


def test_multi_node_template_is_two_machines_through_torchrun():
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _ = _launcher_args(ACCELERATE_CONFIGS / "multi_node.yaml", "--machine_rank", "1", "--num_processes", "2")
    assert args.multi_gpu and args.num_machines == 2 and args.machine_rank == 1
    prepare_multi_gpu_env(args)  # sets torchrun's arguments on `args`
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "1")
    assert args.rdzv_endpoint == "127.0.0.1:29500"  # machine 0's address, from the template


@pytest.mark.parametrize("env, expect", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, ("DeepSpeed (ACCELERATE_USE_DEEPSPEED=true, from an accelerate config such "
     "as configs/accelerate/deepspeed_zero2.yaml) needs CUDA GPUs and the deepspeed package; this machine lacks CUDA "
     "GPUs and the deepspeed package")),
    ({"ACCELERATE_USE_FSDP": "true"}, ("FSDP (ACCELERATE_USE_FSDP=true, from an accelerate config such as "
     "configs/accelerate/fsdp.yaml) needs CUDA GPUs")),
    ({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
     "accelerate launch started this as a lone process"),
    ({"ACCELERATE_USE_CPU": "False", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
     "accelerate launch started this as a lone process"),
], ids=["deepspeed", "fsdp", "accelerate-cpu-lone-process", "accelerate-lone-process"])
def test_train_refuses_what_the_launcher_asked_and_this_machine_cannot_do(tmp_path, capsys, monkeypatch, env, expect):
    import torch

    if torch.cuda.is_available() and "ACCELERATE_USE_CPU" not in env:
        pytest.skip("a CUDA machine can run this")
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_CPU", "MASTER_ADDR", "WORLD_SIZE",
                "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    rc = main(["train", *tiny_overrides(tmp_path / "run", steps=2)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expect in err, err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert {p.name for p in tmp_path.iterdir()} - {"cache"} == {"notes.txt"}  # (the test's own retort cache)
    assert user_file.read_text() == "mine"


def test_deepspeed_with_gpus_still_refuses_accumulation_it_would_step_through(tmp_path):
    run = load_config(TrainRun, None, tiny_overrides(tmp_path / "r", **{"train.grad_accum": 2}))
    env = {"ACCELERATE_USE_DEEPSPEED": "true"}
    with pytest.raises(ConfigError, match=r"train.grad_accum=2: not supported under DeepSpeed"):
        refuse(run, env=env, cuda=True, deepspeed=True)
    refuse(load_config(TrainRun, None, tiny_overrides(tmp_path / "r")), env=env, cuda=True, deepspeed=True)
    with pytest.raises(ConfigError, match="this machine lacks the deepspeed package"):
        refuse(run, env=env, cuda=True, deepspeed=False)
    refuse(run, env={"ACCELERATE_USE_FSDP": "true"}, cuda=True, deepspeed=False)  # FSDP on GPUs runs
    # torchrun sets WORLD_SIZE and LOCAL_RANK: a launched process, not a lone one
    refuse(run, env={"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "h", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, cuda=False)
    refuse(run, env={"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "h", "PMI_SIZE": "2"}, cuda=False)  # under MPI
    refuse(run, env={"MASTER_ADDR": "h"}, cuda=False)  # a MASTER_ADDR of the user's own, no accelerate launcher


def test_main_rank_reads_torchrun_and_mpi_ranks():
    # every process but rank 0 must leave the run directory's lock alone: an MPI launch (accelerate
    # launch --cpu --mpirun_hostfile) names the rank only as PMI_RANK / OMPI_COMM_WORLD_RANK
    assert main_rank({}) and main_rank({"RANK": "0"})
    assert not main_rank({"RANK": "1"})
    assert not main_rank({"PMI_RANK": "1"}) and not main_rank({"OMPI_COMM_WORLD_RANK": "3"})
    assert main_rank({"PMI_RANK": "0"})

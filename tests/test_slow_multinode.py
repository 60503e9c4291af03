"""Two node ranks on this one machine, launched as a user launches two nodes: one launcher process
per node (`torchrun --nnodes 2 --node_rank R`, `accelerate launch --num_machines 2 --machine_rank R`),
gloo on the CPU, both nodes seeing the same `out` (on a cluster: a shared file system). sft and kd
train to the weights and per-step losses of one process with train.grad_accum=2; only rank 0 writes
the run (rank 1 adds its RNG state to each checkpoint, as accelerate's save_state does); the run
directory's lock neither refuses nor blocks the second node, and a second writer stops both."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port, peaked_teacher, tiny_overrides
from safetensors.torch import load_file

from retort.lock import hold
from retort.paths import LOCK_FILE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
CLI = [sys.executable, "-m", "retort.cli"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]
# One process adds the two micro-batches' gradients in .grad; two processes add them in gloo's
# all-reduce. Both are float32 sums of the same two terms, so the weights agree to float32
# rounding: 1e-6 absolute on weights of order 0.01-1, 1e-6 relative on every logged number.
ATOL = 1e-6
RTOL = 1e-6
HANG = 600  # seconds: a guard against a hung rendezvous, not a timing threshold

LAUNCHERS = {
    "torchrun": lambda rank, port: [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
        "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)],
    # accelerate's --cpu launcher does not start the processes (it leaves that to MPI); --multi_gpu
    # runs torchrun, and retort trains on the CPU over gloo where there is no GPU
    "accelerate": lambda rank, port: [
        *ACCELERATE, "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank),
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--num_processes", "2"],
    "accelerate-config": lambda rank, port: [
        *ACCELERATE, "--config_file", str(ROOT / "configs" / "accelerate" / "multi_node.yaml"),
        "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
        "--num_processes", "2"],
}


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env



def _args(out: Path, method: str, teacher: Path, grad_accum: int) -> list[str]:
    extra = {"method": "kd", "teacher.name": peaked_teacher(teacher), "train.lr": 0.02} if method == "kd" else {}
    return tiny_overrides(out, steps=6, **{"train.batch_size": 4, "train.grad_accum": grad_accum,
                                           "train.save_every": 3, "data.n_train": 96, "eval.n": 2, "seed": 1, **extra})


def _two_nodes(launcher, args_of_rank, logs: Path) -> list[tuple[int, str]]:
    """Launch node ranks 0 and 1 at once, each by its own launcher process (`launcher(rank, port)`);
    (exit code, stderr) of each."""
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in (0, 1):  # to files, not pipes: a node blocked on a full pipe would block the other
        with open(logs / f"node{rank}.out", "w") as out, open(logs / f"node{rank}.err", "w") as err:
            procs.append(subprocess.Popen([*launcher(rank, port), "-m", "retort.cli", "train", *args_of_rank(rank)],
                                          env=_env(), stdout=out, stderr=err))
    try:
        codes = [p.wait(timeout=HANG) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(code, (logs / f"node{rank}.err").read_text()) for rank, code in enumerate(codes)]


def _rows(out: Path) -> list[dict]:
    """The training rows of metrics.jsonl, without the wall-clock time."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in rows if "loss" in r]


def _files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, train.grad_accum=2, for each method."""
    root = tmp_path_factory.mktemp("one")
    env = dict(_env(), RETORT_CACHE=str(root / "cache"))
    for method in ("sft", "kd"):
        proc = subprocess.run(CLI + ["train", *_args(root / method, method, root / "teacher", 2)], env=env,
                              check=False, capture_output=True, text=True, timeout=HANG)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
@pytest.mark.parametrize("method", ["sft", "kd"])
def test_two_nodes_train_what_one_process_trains(tmp_path, one_process, method, launcher):
    out = tmp_path / "two"
    # the same teacher files as the reference (a teacher made again from its seed would do too)
    results = _two_nodes(LAUNCHERS[launcher], lambda rank: _args(out, method, one_process / "teacher", 1),
                         tmp_path / "logs")
    assert all(code == 0 for code, _ in results), "\n".join(err[-3000:] for _, err in results)
    ref = one_process / method

    one, two = _rows(ref), _rows(out)
    assert [r["step"] for r in two] == list(range(1, 7)) and two[-1]["loss"] < two[0]["loss"]
    if method == "kd":
        assert all("kd" in r for r in two)
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=RTOL, abs=1e-12), (k, a, b)

    wa, wb = load_file(ref / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=ATOL)

    # rank 0 wrote the run; rank 1 only its RNG streams into each checkpoint (accelerate's
    # save_state, needed for an exact resume); the lock is gone with the run
    extra = _files(out) - _files(ref)
    assert _files(ref) - _files(out) == set()
    assert extra == {f"ckpt/step-{s:07d}/accelerate/random_states_1.pkl" for s in (3, 6)}, sorted(extra)
    assert not any(name.endswith(LOCK_FILE) for name in _files(out))


def test_a_writer_holding_out_stops_both_nodes(tmp_path):
    out = tmp_path / "busy"
    with hold(out):  # another retort command writing this directory
        results = _two_nodes(LAUNCHERS["torchrun"], lambda rank: _args(out, "sft", tmp_path / "t", 1),
                             tmp_path / "logs")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing of the refused run
    (code0, err0), (code1, _) = results
    assert code0 != 0 and code1 != 0  # and both ended (no node waits for ever on the other)
    assert "another retort command is writing to it" in err0


def test_an_out_the_second_node_cannot_see_is_refused_before_step_0(tmp_path):
    # two directories stand for a path each node has on its own disk
    results = _two_nodes(LAUNCHERS["torchrun"],
                         lambda rank: _args(tmp_path / f"node{rank}-out", "sft", tmp_path / "t", 1), tmp_path / "logs")
    (code0, err0), (code1, err1) = results
    assert code0 != 0 and code1 != 0
    assert "must be a path every node shares" in err1 and "process 1 on" in err1
    assert "1 of the run's 2 processes cannot see the run directory" in err0
    assert not (tmp_path / "node0-out").exists() and not (tmp_path / "node1-out").exists()


def test_accelerate_launch_cpu_across_machines_is_refused(tmp_path):
    """`accelerate launch --cpu --num_machines 2` runs the script once per machine and leaves the
    other processes to MPI (--mpirun_hostfile; no MPI here): each node would train alone."""
    def accelerate_cpu(rank, port):
        return [*ACCELERATE, "--cpu", "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip",
                "127.0.0.1", "--main_process_port", str(port), "--num_processes", "2"]

    results = _two_nodes(accelerate_cpu, lambda rank: _args(tmp_path / "run", "sft", tmp_path / "t", 1),
                         tmp_path / "logs")
    for code, err in results:
        assert code != 0 and "accelerate launch started this as a lone process" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP runs on GPUs")
def test_the_fsdp_config_is_refused_on_cpu_through_accelerate_launch(tmp_path):
    cmd = [*ACCELERATE, "--config_file", str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2",
           "--main_process_port", str(free_port()), "-m", "retort.cli", "train",
           *_args(tmp_path / "run", "sft", tmp_path / "t", 1)]
    proc = subprocess.run(cmd, env=_env(), check=False, capture_output=True, text=True, timeout=HANG)
    assert proc.returncode != 0
    assert "error: FSDP (ACCELERATE_USE_FSDP=true, from an accelerate config such as configs/accelerate/fsdp.yaml) " \
           "needs CUDA GPUs" in proc.stderr
    assert not (tmp_path / "run").exists()

"""One writer per output directory (`retort.lock`): a second command writing a run, a trace set, a
curated set, a cached teacher, a demo or a chain of generations is refused at once, with one line
naming the directory and the holder's PID and host; the lock dies with its holder (kill -9
included); readers are never blocked; and two identical API-teacher `retort traces` started at once
request each answer once.

The writers here are real processes (`python -m retort.cli ...`, or a process holding a directory
with `retort.lock.hold`); the API teacher is the loopback server of `tests/apiserver.py`, gated so
that the command that got the lock is still waiting on its first answers while the test runs the
other one."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from apiserver import ApiServer

import retort
from retort.cli import main
from retort.lm.data.traces import read_manifest, read_traces
from retort.paths import LOCK_FILE

SRC = str(Path(retort.__file__).parents[1])  # the retort under test, for the child processes
N_PROMPTS, N_SAMPLES = 4, 2


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    """Messages are matched whole: rich would wrap them at the terminal width."""
    monkeypatch.setenv("COLUMNS", "1000")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)}


class GatedServer(ApiServer):
    """The loopback server, answering nothing until `gate` is set. ApiServer sleeps `delay` seconds
    before each answer; here reading `delay` waits for the gate (and then no sleep)."""

    def __init__(self, **kw):
        self.gate = threading.Event()
        super().__init__(**kw)

    @property
    def delay(self) -> float:
        self.gate.wait(300)
        return 0.0

    @delay.setter
    def delay(self, value) -> None:
        pass


def _traces_cmd(out, url) -> list[str]:
    args = {"teacher.name": "openai:m", "task.name": "modchain", "n_prompts": N_PROMPTS, "shard_prompts": 2,
            "sampling.n": N_SAMPLES, "teacher.api.backoff_s": 0.01, "teacher.api.base_url": url, "out": str(out)}
    return [sys.executable, "-m", "retort.cli", "traces", *[f"{k}={v}" for k, v in args.items()]]


def _start(cmd) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise AssertionError("waited too long")
        time.sleep(0.02)


def _asked(server) -> list[tuple]:
    """The answers the server was asked for: (prompt, seed) of each completion request."""
    return [(e["prompt"], e["seed"]) for e in server.completions()]


def _asked_twice(server) -> bool:
    asked = _asked(server)
    return len(set(asked)) < len(asked)


def _refusal(text: str, out, pid: int) -> str:
    """The one line a refused writer prints: the directory, then the holder's PID and host."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    line = lines[0]
    assert line.startswith("error: ") and str(out) in line, line
    assert f"PID {pid} on {socket.gethostname()}" in line, line
    return line


@pytest.fixture
def holder():
    """`hold(path)`: a separate process that holds `path`'s lock (retort.lock.hold) until the test
    ends; returns the process."""
    procs = []

    def hold(path) -> subprocess.Popen:
        code = ("import signal, sys\nfrom retort.lock import hold\n"
                "with hold(sys.argv[1]):\n    print('held', flush=True)\n    signal.pause()\n")
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held", proc.stderr.read()
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def _listing(path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


# ------------------------------------------------------------ two real `retort traces`, one killed with -9


def test_a_second_writer_is_refused_at_once_and_kill_9_frees_the_directory(tmp_path):
    out = tmp_path / "t"
    with GatedServer() as s:
        first = second = _start(_traces_cmd(out, s.url))
        try:
            # the first holds the lock and waits on the server, which answers nothing yet
            _wait_for(lambda: s.completions() or first.poll() is not None)
            assert first.poll() is None, first.stdout.read()
            second = _start(_traces_cmd(out, s.url))
            _wait_for(lambda: second.poll() is not None or _asked_twice(s))
            assert not _asked_twice(s), "the second command requested answers the first is waiting for"
            assert first.poll() is None  # the second did not wait for the first to end
            assert second.returncode == 2
            line = _refusal(second.stdout.read(), out, first.pid)
            assert "another retort command is writing to it" in line
            first.send_signal(signal.SIGKILL)
            first.wait()
            assert (out / LOCK_FILE).is_file()  # what the killed holder left: a file nobody locks
            s.gate.set()
            third = subprocess.run(_traces_cmd(out, s.url), env=_env(), capture_output=True, text=True, timeout=120,
                                   check=False)
        finally:
            for p in (first, second):
                p.kill()
                p.wait()
    assert third.returncode == 0, third.stdout + third.stderr
    assert read_traces(out).num_rows == N_PROMPTS * N_SAMPLES
    assert not (out / LOCK_FILE).exists()  # released, and removed with it


# ------------------------------------------------------------ the acceptance check: each answer requested once


def test_two_identical_api_traces_at_once_request_each_answer_once(tmp_path):
    """Two identical `retort traces` started at once (two terminals, a cron job run twice) against
    one server: one writes the set, the other is refused, and the server is asked for each answer
    exactly once."""
    out = tmp_path / "t"
    n_keys = N_PROMPTS * N_SAMPLES
    with GatedServer() as s:
        procs = [_start(_traces_cmd(out, s.url)) for _ in range(2)]
        try:
            # one must end by itself while the other waits on the server; both asking is the failure
            _wait_for(lambda: any(p.poll() is not None for p in procs) or _asked_twice(s))
            assert not _asked_twice(s), "both commands requested the answers"
            refused = next(p for p in procs if p.poll() is not None)
            writer = procs[1 - procs.index(refused)]
            s.gate.set()
            writer.wait(timeout=120)
        finally:
            for p in procs:
                p.kill()
                p.wait()
        texts = [p.stdout.read() for p in (refused, writer)]
    assert refused.returncode == 2
    _refusal(texts[0], out, writer.pid)
    assert writer.returncode == 0, texts[1]
    asked = _asked(s)
    assert len(asked) == n_keys and len(set(asked)) == n_keys  # each answer requested once
    assert read_traces(out).num_rows == n_keys
    assert read_manifest(out)["ledger"]["responses"] == n_keys


# ------------------------------------------------------------ every writer takes the lock; readers never do


def _writers(tmp_path) -> tuple[Path, dict]:
    """The directory `d`, and command name -> argv of a command that writes `d`."""
    d = tmp_path / "held"
    cls = ["track=classify", "task.name=digits-3"]
    return d, {
        "train": ["train", *cls, "method=ce", "student.name=mlp:16", f"out={d}", "train.steps=2"],
        "train --resume": ["train", *cls, "method=ce", "student.name=mlp:16", f"out={d}", "train.steps=2", "--resume"],
        "traces": ["traces", "teacher.name=openai:m", "teacher.api.base_url=http://127.0.0.1:9/v1", f"out={d}"],
        "curate": ["curate", str(tmp_path / "src"), "--out", str(d), "--correct"],
        "teacher": ["teacher", *cls, f"out={d}", "train.steps=2"],
        "demo": ["demo", "--track", "classify", "--methods", "ce", "--out", str(d)],
        "generations": ["generations", "2", *cls, "method=kd", "student.name=mlp:16", "teacher.name=x", f"out={d}"],
    }


@pytest.mark.parametrize("command", ["train", "train --resume", "traces", "curate", "teacher", "demo", "generations"])
def test_every_writer_is_refused_a_directory_another_process_holds(command, tmp_path, holder, capsys):
    d, writers = _writers(tmp_path)
    d.mkdir()
    (d / "user.txt").write_text("mine")
    proc = holder(d)
    before = _listing(d)
    assert main(writers[command]) == 2
    cap = capsys.readouterr()
    line = _refusal(cap.out + cap.err, f"={d}", proc.pid)
    assert "another retort command is writing to it" in line
    assert _listing(d) == before  # nothing written, nothing removed


def test_readers_are_never_blocked(tmp_path, holder, capsys):
    """eval, report and curate --stats read a run and a trace set another process is writing (holds);
    a writer into either is refused meanwhile."""
    run = tmp_path / "run"
    assert main(["train", "track=classify", "task.name=digits-3", "method=ce", "student.name=mlp:16",
                 f"out={run}", "train.steps=4", "train.eval_every=0"]) == 0
    traces = tmp_path / "traces"
    with ApiServer() as s:
        assert main(_traces_cmd(traces, s.url)[3:]) == 0
    capsys.readouterr()
    holders = [holder(run), holder(traces)]
    assert main(["eval", "track=classify", "task.name=digits-3", "-m", f"s={run / 'model'}"]) == 0
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 0
    capsys.readouterr()
    assert main(["curate", str(traces), "--stats"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == N_PROMPTS * N_SAMPLES
    for path, proc, argv in ((run, holders[0], ["train", "track=classify", "task.name=digits-3", "method=ce",
                                                "student.name=mlp:16", f"out={run}", "train.steps=4",
                                                "train.eval_every=0", "--resume"]),
                             (traces, holders[1], _traces_cmd(traces, "http://127.0.0.1:9/v1")[3:])):
        assert main(argv) == 2
        cap = capsys.readouterr()
        _refusal(cap.out + cap.err, path, proc.pid)
    # an --out that is the input is refused as such, before curate would lock (write in) the input
    assert main(["curate", str(traces), "--out", str(traces), "--correct"]) == 2
    assert "--out must differ from the input" in capsys.readouterr().err


# ------------------------------------------------------------ the lock file is never content, never junk


def test_a_lock_file_left_by_a_killed_writer_is_not_content_and_a_failed_run_leaves_nothing(tmp_path, capsys):
    cls = ["train", "track=classify", "task.name=digits-3", "student.name=mlp:16", "train.steps=2",
           "train.eval_every=0"]
    d = tmp_path / "stale"
    d.mkdir()
    (d / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "gone", "since": "2020-01-01T00:00:00Z"}))
    assert main([*cls, "method=ce", f"out={d}"]) == 0  # a new run: the directory counts as empty
    assert (d / "model").is_dir() and not (d / LOCK_FILE).exists()
    new = tmp_path / "new" / "run"
    assert main([*cls, "method=kd", f"teacher.name={tmp_path / 'no-teacher'}", f"out={new}"]) == 2
    assert not (tmp_path / "new").exists()  # the directories the lock made went with it
    capsys.readouterr()

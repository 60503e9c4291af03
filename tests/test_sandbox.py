"""The sandboxed Python executor (retort.sandbox): snippets that try to escape are contained.

Real bubblewrap, real namespaces and limits; the faults (no bwrap, no namespaces) are injected by
a fake `bwrap` on PATH. Where bwrap is not installed the tests skip (CI installs it)."""

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from retort.sandbox import Limits, SandboxError, Session, check, run, seccomp

ROOT = Path(__file__).resolve().parents[1]



def _why_not() -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed: the sandbox cannot run here (.ci/run installs it)"
    try:
        check()
    except SandboxError as e:
        return f"the sandbox cannot start on this machine: {e}"
    return None


WHY_NOT = _why_not()
# the escape tests need a working sandbox; the refusals (at the end) run everywhere
needs_sandbox = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

# a bound for snippets that end by themselves (a loaded machine starts python slowly)
QUICK = Limits(timeout_s=20, cpu_s=5)
# the snippet's pid namespace, printed first: afterwards no host process may still be in it
NS = "import os, sys; print(os.readlink('/proc/self/ns/pid'), flush=True)\n"


def _left_in(ns: str) -> list[int]:
    """Host processes still running in pid namespace `ns` ("pid:[N]"); an exited one waiting to be
    reaped (a zombie: its init, whose parent bwrap was killed) runs nothing."""
    left = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if os.readlink(p / "ns" / "pid") == ns and state not in ("Z", "X"):
                    left.append(int(p.name))
            except OSError:
                pass
    return left


def _ns(res) -> str:
    first = res.stdout.splitlines()[0]
    assert first.startswith("pid:["), res
    return first


@needs_sandbox
def test_plain_snippet_and_venv_packages():
    res = run("import numpy, os\nprint(numpy.arange(4).sum(), os.getcwd(), os.environ['HOME'])")
    assert res.ok and res.stdout.split() == ["6", "/sandbox", "/sandbox"], res
    assert res.killed_by is None and not res.truncated


@needs_sandbox
def test_error_and_exit_code():
    res = run("raise ValueError('boom')")
    assert res.exit_code == 1 and "ValueError: boom" in res.stderr and "<snippet>" in res.stderr
    assert run("import sys; sys.exit(3)").exit_code == 3


@needs_sandbox
def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        # the host's own loopback server, and the outside world: neither reachable
        res = run(f"import socket\nfor addr in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n"
                  "    try:\n        socket.create_connection(addr, timeout=2); print('connected')\n"
                  "    except OSError as e:\n        print('refused', e.errno)", QUICK)
    finally:
        server.close()
    assert res.ok and res.stdout.count("refused") == 2 and "connected" not in res.stdout, res


@needs_sandbox
def test_home_not_writable_and_not_visible(tmp_path):
    home = Path.home()
    name = f"retort-sandbox-probe-{os.getpid()}"
    res = run(f"import os\ntry:\n    open({str(home / name)!r}, 'w').write('x'); print('wrote home')\n"
              "except OSError as e:\n    print('refused', e.errno)\n"
              f"open(os.path.expanduser('~/{name}'), 'w').write('x'); print('wrote sandbox home')", QUICK)
    assert res.ok and "refused" in res.stdout and "wrote home" not in res.stdout, res
    assert not (home / name).exists()


@needs_sandbox
def test_project_files_not_visible():
    pyproject = ROOT / "pyproject.toml"
    assert pyproject.is_file()
    res = run(f"import os\nr = {str(ROOT)!r}\nprint(os.path.exists({str(pyproject)!r}))\n"
              f"print(sorted(os.listdir(r)) if os.path.isdir(r) else [])\nopen({str(pyproject)!r})", QUICK)
    out = res.stdout.splitlines()
    # the interpreter's prefix is bound read-only: where the virtual environment lives inside the
    # project (`.ci/run` makes one there) its mount point shows the project directory with that one
    # entry and nothing else of the project
    venv = Path(sys.prefix).resolve()
    inside = [venv.relative_to(ROOT).parts[0]] if venv.is_relative_to(ROOT) else []
    assert out[0] == "False" and out[1] == str(sorted(inside)) and "FileNotFoundError" in res.stderr, res


@needs_sandbox
def test_nothing_writable_outside_the_workdir():
    res = run("import sys, os\nfor p in ['/usr/x', sys.prefix + '/x', '/x', '/proc/sys/kernel/hostname']:\n"
              "    try:\n        open(p, 'w').write('1'); print('wrote', p)\n    except OSError:\n        print('no')",
              QUICK)
    assert res.ok and res.stdout.split() == ["no"] * 4, res


@needs_sandbox
def test_fork_bomb_contained():
    bomb = NS + "n = 0\nwhile True:\n    try:\n        os.fork(); n += 1\n    except OSError:\n        pass\n"
    res = run(bomb, Limits(timeout_s=4, cpu_s=5, processes=16))
    assert res.timed_out and res.killed_by == "timeout"
    assert _left_in(_ns(res)) == []
    # the limit itself: the 16th process is refused (EAGAIN), the snippet goes on
    count = run("import os, time\nn = 0\ntry:\n    while n < 100:\n        if os.fork() == 0:\n"
                "            time.sleep(2); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print(n, e.errno)",
                Limits(timeout_s=10, processes=16))
    n, errno = map(int, count.stdout.split())
    assert n < 16 and errno == 11, count


@needs_sandbox
def test_infinite_loop_timeout_and_cpu_limit():
    res = run("while True:\n    pass", Limits(timeout_s=1, cpu_s=30))
    assert res.timed_out and res.killed_by == "timeout" and not res.ok
    res = run("while True:\n    pass", Limits(timeout_s=30, cpu_s=1))
    assert not res.timed_out and res.killed_by in ("SIGXCPU", "SIGKILL"), res


@needs_sandbox
def test_ten_gigabytes_refused():
    res = run("x = bytearray(10 * 1024 ** 3)\nprint('allocated')", QUICK)
    assert "allocated" not in res.stdout
    assert "MemoryError" in res.stderr or res.killed_by is not None, res


@needs_sandbox
def test_sigterm_ignored_still_killed():
    res = run(NS + "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)",
              Limits(timeout_s=3))
    assert res.timed_out and _left_in(_ns(res)) == []


@needs_sandbox
def test_output_flood_truncated():
    res = run("while True:\n    print('x' * 1000)", Limits(timeout_s=3, output_bytes=5000))
    assert res.truncated and len(res.stdout) == 5000 and res.timed_out
    res = run("import sys\nsys.stderr.write('e' * 100000)\nprint('done')", Limits(output_bytes=100))
    assert res.ok and res.truncated and res.stdout == "done\n" and len(res.stderr) == 100


@needs_sandbox
def test_child_left_running_is_killed_with_the_snippet():
    # a child that ignores SIGTERM and holds stdout open; the snippet exits at once
    res = run(NS + "import subprocess\nsubprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\nprint('left it')",
              Limits(timeout_s=20))
    assert res.ok and not res.timed_out and "left it" in res.stdout, res
    assert _left_in(_ns(res)) == []


@needs_sandbox
def test_limits_cannot_be_raised():
    res = run("import resource\nresource.setrlimit(resource.RLIMIT_NPROC, (10000, 10000))", QUICK)
    assert res.exit_code == 1 and "ValueError" in res.stderr, res


@needs_sandbox
@pytest.mark.skipif(not seccomp.supported(), reason="the seccomp filter is for x86-64")
def test_seccomp_refuses_kernel_surface_calls_only():
    res = run("import ctypes, errno, subprocess, threading\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "for nr, args in [(101, (0, 0, 0, 0)), (272, (0x10000000,)), (321, (0, 0, 0)), (425, (1, 0)),"
              " (250, (0, 0))]:\n"
              "    print(libc.syscall(nr, *args), errno.errorcode[ctypes.get_errno()])\n"
              "print(subprocess.run(['/bin/echo', 'spawned'], capture_output=True, text=True).stdout.strip())\n"
              "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
              "print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0])\n"
              # clone(CLONE_NEWUSER | SIGCHLD): a new user namespace, refused; a plain fork goes on
              "r = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)\nif r == 0:\n    import os; os._exit(0)\n"
              "print(r, errno.errorcode[ctypes.get_errno()])", QUICK)
    assert res.ok, res
    assert res.stdout.splitlines() == ["-1 EPERM"] * 5 + ["spawned", "thread", "2", "-1 EPERM"]


@needs_sandbox
def test_session_replays_cells():
    s = Session(QUICK)
    assert s.run("a = 20\nprint('first')").stdout == "first\n"
    assert not s.run("b = undefined_name").ok  # a failed cell is not replayed
    res = s.run("print(a + 22)")
    assert res.stdout == "42\n" and s.cells == ["a = 20\nprint('first')", "print(a + 22)"]


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                    reason="checks the unprivileged path from root, with the system python")
def test_unprivileged_user_path():
    """As a normal user the sandbox has its own user namespace; the process limit still holds."""
    # the normal user imports retort from a copy every user can read (a checkout may lie under a
    # directory only root can enter, as `mktemp -d` makes them)
    shared = Path(tempfile.mkdtemp(prefix="retort-nobody-"))
    try:
        shared.chmod(0o755)
        shutil.copytree(ROOT / "src" / "retort", shared / "retort", ignore=shutil.ignore_patterns("__pycache__"))
        _unprivileged_run(shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _unprivileged_run(src: Path) -> None:
    script = (f"import sys\nsys.path.insert(0, {str(src)!r})\n"
                      "from retort.sandbox import Limits, run\n"
                      "r = run('import os; print(os.getuid())')\nprint(r.stdout.strip(), r.exit_code)\n"
                      "r = run('import os, time\\nn = 0\\ntry:\\n    while n < 100:\\n        if os.fork() == 0:\\n"
                      "            time.sleep(2); os._exit(0)\\n        n += 1\\nexcept OSError as e:\\n"
                      "    print(n)', Limits(processes=16))\nprint(r.stdout.strip())\n")

    def nobody():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    out = subprocess.run(["/usr/bin/python3", "-c", script], check=False, preexec_fn=nobody, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=60)
    if "cannot start" in out.stderr:
        pytest.skip(f"no unprivileged user namespaces here: {out.stderr.strip()[-200:]}")
    lines = out.stdout.split("\n")
    assert lines[0] == "65534 0" and int(lines[1]) < 16, out


def _fake_bwrap(tmp_path, monkeypatch, body: str):
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n" + body)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(fake.parent))


def test_refuses_without_bwrap(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match="bubblewrap.*not installed.*never runs code without it"):
        run("print(1)")


def test_refuses_without_namespaces(monkeypatch, tmp_path):
    marker = tmp_path / "ran"
    # what bwrap says on a machine without user namespaces; the code must not run anyway
    _fake_bwrap(tmp_path, monkeypatch, "echo 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    with pytest.raises(SandboxError) as e:
        run(f"open({str(marker)!r}, 'w')")
    msg = str(e.value)
    assert msg.startswith("the sandbox cannot start: bwrap: No permissions to create new namespace")
    assert msg.endswith("retort never runs code without it") and "\n" not in msg
    assert not marker.exists()


def test_refuses_an_interpreter_that_would_show_the_home_directory(monkeypatch, tmp_path):
    _fake_bwrap(tmp_path, monkeypatch, "exit 1\n")  # refused before bwrap runs, wherever bwrap is
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(sys, "prefix", str(home))  # e.g. a virtual environment made in the home directory itself
    with pytest.raises(SandboxError, match="holds the home directory"):
        run("print(1)")


def test_commands_refuse_in_one_line_and_write_nothing(monkeypatch, tmp_path, capsys):
    from retort.cli import main

    _fake_bwrap(tmp_path, monkeypatch, "echo 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    out = tmp_path / "traces"
    assert main(["traces", "task.name=progs", "program=python", "teacher.name=preset:nano", "n_prompts=2",
                 f"out={out}"]) == 2
    assert main(["eval", "task.name=progs", "model.name=preset:nano", "eval.n=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    said = [line for line in err if "cannot start" in line]
    assert len(said) == 2 and all("retort never runs code without it" in line for line in said), err
    assert not out.exists()
    # training on the program toy is refused before step 0 (its evaluation runs programs)
    run = tmp_path / "run"
    assert main(["train", "task.name=progs", "student.name=preset:nano", "train.steps=1", "data.n_train=4",
                 f"out={run}"]) == 2
    assert "cannot start" in capsys.readouterr().err and not run.exists()


def test_older_bwrap_without_disable_userns(monkeypatch, tmp_path):
    """bwrap < 0.8 has no --disable-userns (Ubuntu 22.04 ships 0.6): the command leaves it out
    (the seccomp filter refuses new user namespaces anyway); 0.8 gets it."""
    from retort.sandbox import executor

    monkeypatch.setattr(executor, "_as_root", lambda: False)
    for said, expect in (("bubblewrap 0.6.1", False), ("bubblewrap 0.8.0", True)):
        fake = tmp_path / said.replace(" ", "-") / "bwrap"
        fake.parent.mkdir()
        fake.write_text(f"#!/bin/sh\necho '{said}'\n")
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", str(fake.parent))
        args = executor.command(Limits())
        assert ("--disable-userns" in args) is expect and "--unshare-user" in args

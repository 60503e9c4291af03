"""The twenty faults of issue 11, one test (or more) each: bad input that destroyed a user's files,
ended in a traceback, or was silently wrong. Each test failed on the code before the fix."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from retort.cli import main
from retort.config import load_config
from retort.lm.config import EvalRun, TracesRun, TrainRun
from retort.lm.curate import filter_traces
from retort.lm.data.traces import read_manifest, read_traces
from retort.errors import ConfigError, DataError, RetortError
from retort.lm.traces import run_traces
from retort.train import train


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    """Messages are matched whole: rich would wrap them at the terminal width."""
    monkeypatch.setenv("COLUMNS", "1000")


def _rows(n, start=0, **extra):
    return [{"id": f"r{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1), "solution": f"{i} + 1 = {i + 1}\nA:{i + 1}",
             **extra} for i in range(start, start + n)]


def _jsonl(path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _traces(out, n_prompts=8, **extra) -> Path:
    args = {"out": str(out), "teacher.name": "preset:nano", "n_prompts": n_prompts, "shard_prompts": 4,
            "sampling.n": 2, "sampling.max_new_tokens": 8, "batch_size": 16}
    args.update(extra)
    run_traces(load_config(TracesRun, None, [f"{k}={v}" for k, v in args.items()]))
    return Path(out)


def _hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _user_files(root: Path) -> Path:
    """A directory of things a user owns, including names retort itself writes."""
    (root / "src").mkdir(parents=True)
    (root / "notes.txt").write_text("my notes")
    (root / "src" / "app.py").write_text("print('hello')\n")
    (root / "manifest.json").write_text('{"my": "own manifest"}')
    (root / "model").mkdir()
    (root / "model" / "model.safetensors").write_bytes(b"my weights")
    (root / "model" / "config.json").write_text("{}")
    (root / "tokenizer_config.json").write_text("{}")
    (root / "metrics.jsonl").write_text('{"mine": 1}\n')
    (root / "part-00000.parquet.tmp").write_text("my tmp file")
    return root


def _cli(capsys, *args) -> tuple[int, str]:
    rc = main(list(args))
    err = capsys.readouterr().err
    return rc, " ".join(err.split())


# ---------------------------------------------------------------- 1-3: data lost


def test_1_curate_never_deletes_a_directory_that_is_not_a_pure_trace_set(tmp_path, capsys):
    src = _traces(tmp_path / "t")
    user = _user_files(tmp_path / "mine")
    before = _hashes(user)
    rc, err = _cli(capsys, "curate", str(src), "--out", str(user), "--max-tokens", "100")
    assert rc == 2 and "is not empty and is not a retort trace set (it holds metrics.jsonl, model/, notes.txt" in err
    assert _hashes(user) == before
    for overwrite in (False, True):
        with pytest.raises(DataError, match="not a retort trace set.*choose a new or empty directory"):
            filter_traces(str(src), str(user), correct_only=False, max_tokens=100, overwrite=overwrite)
    assert _hashes(user) == before
    # a real trace set with one user file dropped in is not "pure" either: refused even with --overwrite
    filter_traces(str(src), str(tmp_path / "c"), max_tokens=100)
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"not a retort trace set \(it holds notes.txt\)"):
        filter_traces(str(src), str(tmp_path / "c"), max_tokens=50, overwrite=True)
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine" and (tmp_path / "c" / "manifest.json").is_file()


def test_2_curate_never_replaces_a_sampled_trace_set_without_overwrite(tmp_path, capsys):
    src = _traces(tmp_path / "t")
    other = _traces(tmp_path / "t2", seed=1)
    shards = _hashes(other)
    rc, err = _cli(capsys, "curate", str(src), "--out", str(other), "--max-tokens", "100")
    assert rc == 2 and "already holds a trace set sampled by `retort traces`; pass --overwrite" in err
    assert _hashes(other) == shards
    rc, err = _cli(capsys, "curate", str(src), "--out", str(src), "--max-tokens", "100", "--overwrite")
    assert rc == 2 and "--out must differ from the input" in err
    rc, err = _cli(capsys, "curate", str(src), "--out", str(src / "sub"), "--max-tokens", "100")
    assert rc == 2 and "inside the input trace directory" in err
    assert read_manifest(src)["complete"] and not (src / "sub").exists()
    # asked explicitly, the sampled set is replaced (and only its own files were there)
    rc, _ = _cli(capsys, "curate", str(src), "--out", str(other), "--max-tokens", "100", "--overwrite")
    assert rc == 0 and "source" in read_manifest(other)["params"]
    # a curated set is not silently replaced either
    rc, err = _cli(capsys, "curate", str(src), "--out", str(other), "--max-tokens", "5")
    assert rc == 2 and "already holds a curated trace set" in err


def test_3_train_refuses_a_non_empty_directory_that_is_not_a_run(tmp_path, capsys):
    user = _user_files(tmp_path / "mine")
    before = _hashes(user)
    for resume in ([], ["--resume"]):
        rc, err = _cli(capsys, "train", *resume, *tiny_overrides(user, steps=2))
        assert rc == 2 and "not empty and holds no retort run (no config.yaml)" in err
    assert _hashes(user) == before
    # an empty directory is fine
    (tmp_path / "empty").mkdir()
    assert _cli(capsys, "train", *tiny_overrides(tmp_path / "empty", steps=1))[0] == 0


# ---------------------------------------------------------------- 4-9: tracebacks


def test_4_non_utf8_task_file_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "task.jsonl"
    lines = [json.dumps(r).encode() for r in _rows(3)]
    lines[1] = lines[1].replace(b"What", b"Wh\xe4t")
    path.write_bytes(b"\n".join(lines) + b"\n")
    rc, err = _cli(capsys, "eval", f"task.name={path}", "model.name=preset:nano")
    assert rc == 2 and f"{path}:2: not UTF-8 text (byte 0xe4 at column" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"seed: 1\n# caf\xe9\n")
    rc, err = _cli(capsys, "train", "-c", str(cfg))
    assert rc == 2 and f"{cfg}: not UTF-8 text" in err


def _interrupted_run(tmp_path, monkeypatch, name, stop_after=6):
    """A run of 8 steps (checkpoints every 2) stopped right after checkpoint `stop_after` is written."""
    import retort.train.loop as loop

    real = loop.save_checkpoint

    class Killed(BaseException):
        pass

    def save_then_die(run_dir, step, **kw):
        path = real(run_dir, step, **kw)
        if step == stop_after:
            raise Killed
        return path

    args = tiny_overrides(tmp_path / name, steps=8, **{"train.save_every": 2, "data.n_train": 64})
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(load_config(TrainRun, None, args))
    monkeypatch.setattr(loop, "save_checkpoint", real)
    return args


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("damaged", ["model/model.safetensors", "accelerate/optimizer.bin"])
def test_5_6_damaged_latest_checkpoint_falls_back_to_the_previous_one_bitwise(tmp_path, monkeypatch, capsys, damaged):
    ref = tiny_overrides(tmp_path / "ref", steps=8, **{"train.save_every": 2, "data.n_train": 64})
    train(load_config(TrainRun, None, ref))
    args = _interrupted_run(tmp_path, monkeypatch, "cut")
    _truncate(tmp_path / "cut" / "ckpt" / "step-0000006" / damaged)
    rc, err = _cli(capsys, "train", "--resume", *args)
    assert rc == 0, err
    assert f"step-0000006 is damaged ({damaged} has" in err and "resuming from the previous one, step-0000004" in err
    assert (tmp_path / "cut" / "ckpt" / "damaged-step-0000006").is_dir()
    a = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    ref_losses = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == list(range(1, 9))
    assert [r["loss"] for r in losses if "loss" in r] == [r["loss"] for r in ref_losses if "loss" in r]


def test_5_a_checkpoint_without_recorded_hashes_is_still_checked(tmp_path, monkeypatch, capsys):
    args = _interrupted_run(tmp_path, monkeypatch, "cut")
    for step in ("step-0000004", "step-0000006"):  # as checkpoints of older retort versions were written
        state = tmp_path / "cut" / "ckpt" / step / "state.json"
        state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "files"}))
    _truncate(tmp_path / "cut" / "ckpt" / "step-0000006" / "accelerate" / "optimizer.bin")
    rc, err = _cli(capsys, "train", "--resume", *args)
    assert rc == 0 and "step-0000006 is damaged" in err and "step-0000004" in err


def test_5_every_checkpoint_damaged_is_one_clear_error(tmp_path, monkeypatch, capsys):
    args = _interrupted_run(tmp_path, monkeypatch, "cut", stop_after=4)
    for step in ("step-0000002", "step-0000004"):
        _truncate(tmp_path / "cut" / "ckpt" / step / "model" / "model.safetensors")
    rc, err = _cli(capsys, "train", "--resume", *args)
    assert rc == 2 and "every checkpoint is damaged" in err


def test_5_truncated_model_directory_is_a_clear_error(tmp_path, capsys):
    train(load_config(TrainRun, None, tiny_overrides(tmp_path / "r", steps=1)))
    _truncate(tmp_path / "r" / "model" / "model.safetensors")
    rc, err = _cli(capsys, "eval", "-m", str(tmp_path / "r" / "model"), "eval.n=2")
    assert rc == 2 and "a file in it is damaged or incomplete (SafetensorError" in err


def test_7_tokenizer_without_pad_or_eos_says_what_it_lacks(tmp_path, capsys):
    from retort.lm.config import ModelConfig
    from retort.lm.models import load_model

    model, tok = load_model(ModelConfig(name="preset:nano"))
    tok.pad_token, tok.eos_token = None, None
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    assert cfg.get("pad_token") is None and cfg.get("eos_token") is None
    rc, err = _cli(capsys, "train", *tiny_overrides(tmp_path / "r", steps=1, **{"student.name": tmp_path / "m"}))
    assert rc == 2 and "has neither a pad nor an eos token" in err and '"eos_token"' in err
    assert not (tmp_path / "r").exists()


def test_8_an_output_path_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    src = _traces(tmp_path / "t")
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    cases = [
        ("train", *tiny_overrides(blocker, steps=1)),
        ("traces", f"out={blocker}", "teacher.name=preset:nano", "n_prompts=2"),
        ("eval", "model.name=preset:nano", "eval.n=2", "--json", str(blocker / "x.json")),
        ("curate", str(src), "--out", str(blocker), "--max-tokens", "5"),
        ("curate", str(src), "--out", str(blocker / "sub"), "--max-tokens", "5"),
        ("report", str(_jsonl(tmp_path / "e.json", [])), "-o", str(blocker / "r.html")),
    ]
    for args in cases:
        rc, err = _cli(capsys, *args)
        assert rc == 2 and str(blocker) in err and ("is an existing file" in err or "is a file" in err), (args, err)
    assert blocker.read_text() == "mine"


def test_9_traces_on_an_empty_train_split_writes_nothing(tmp_path, capsys):
    # every row of this file hashes into the test split at test_fraction=0.5
    from retort.lm.tasks.base import in_test_split

    rows = [r for r in _rows(40) if in_test_split(r["prompt"], 2)][:3]
    path = _jsonl(tmp_path / "t.jsonl", rows)
    rc, err = _cli(capsys, "traces", f"out={tmp_path / 'out'}", "teacher.name=preset:nano", f"task.name={path}",
                   "task.test_fraction=0.5", "n_prompts=4")
    assert rc == 2 and "traces: no examples in the train split of" in err and "0 of its 3 rows" in err
    assert not (tmp_path / "out").exists()


def test_9_traces_sample_each_prompt_of_a_small_file_once(tmp_path, capsys):
    path = _jsonl(tmp_path / "t.jsonl", _rows(5))
    _traces(tmp_path / "out", n_prompts=12, **{"task.name": path, "task.test_fraction": 0.0})
    table = read_traces(tmp_path / "out")
    ids = table["prompt_id"].to_pylist()
    assert sorted(set(ids)) == [f"r{i}" for i in range(5)] and len(ids) == 5 * 2


# ---------------------------------------------------------------- 10-13: silently wrong


def test_10_eval_on_an_empty_test_split_refuses(tmp_path, capsys):
    from retort.lm.tasks.base import in_test_split

    rows = [r for r in _rows(60) if not in_test_split(r["prompt"], 10)][:5]
    path = _jsonl(tmp_path / "t.jsonl", rows)
    rc, err = _cli(capsys, "eval", f"task.name={path}", "task.test_fraction=0.1", "model.name=preset:nano")
    assert rc == 2 and "no examples in the test split" in err and "task.test_fraction=0" in err
    # training on it is refused before anything is written, not after training
    rc, err = _cli(capsys, "train", *tiny_overrides(tmp_path / "r", steps=1, **{"task.name": path}))
    assert rc == 2 and "the run's evaluation: no examples in the test split" in err
    assert not (tmp_path / "r").exists()


def test_11_resuming_a_finished_run_is_a_no_op_and_train_time_accumulates(tmp_path, monkeypatch, capsys):
    args = tiny_overrides(tmp_path / "r", steps=3)
    train(load_config(TrainRun, None, args), evaluate=lambda m, t, task: {"accuracy": 0.5})
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    rc, err = _cli(capsys, "train", "--resume", *args)
    assert rc == 0 and "this run finished (3 steps); nothing to resume" in err
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before
    assert json.loads((tmp_path / "r" / "summary.json").read_text()) == summary
    # killed after step 6 and resumed: the summary's time covers both segments
    import time as time_module

    cut = _interrupted_run(tmp_path, monkeypatch, "cut")
    state = json.loads((tmp_path / "cut" / "ckpt" / "step-0000006" / "state.json").read_text())
    assert state["train_time_s"] > 0
    state["train_time_s"] = 1000.0  # as if the first segment had taken 1000 s
    (tmp_path / "cut" / "ckpt" / "step-0000006" / "state.json").write_text(json.dumps(state))
    t0 = time_module.time()
    assert _cli(capsys, "train", "--resume", *cut)[0] == 0
    took = time_module.time() - t0
    total = json.loads((tmp_path / "cut" / "summary.json").read_text())["train_time_s"]
    assert 1000.0 < total < 1000.0 + took + 1


def test_11_resume_after_the_final_checkpoint_does_not_repeat_the_final_eval(tmp_path, monkeypatch):
    args = tiny_overrides(tmp_path / "r", steps=4)
    evals = []

    def evaluate(m, t, task):
        evals.append(1)
        if len(evals) == 1:
            raise KeyboardInterrupt  # killed during the final evaluation
        return {"accuracy": 0.25}

    with pytest.raises(KeyboardInterrupt):
        train(load_config(TrainRun, None, args), evaluate=evaluate)
    train(load_config(TrainRun, None, args), resume=True, evaluate=evaluate)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert sum("eval/accuracy" in r for r in rows) == 1 and [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


def test_12_resume_without_a_run_says_it_starts_a_new_one(tmp_path, capsys):
    rc, err = _cli(capsys, "train", "--resume", *tiny_overrides(tmp_path / "r", steps=1))
    assert rc == 0 and f"--resume: no run in {tmp_path / 'r'} yet; starting a new one" in err


def test_13_a_moved_run_directory_resumes(tmp_path, monkeypatch, capsys):
    args = _interrupted_run(tmp_path, monkeypatch, "cut")
    shutil.move(tmp_path / "cut", tmp_path / "moved")
    moved = [a if not a.startswith("out=") else f"out={tmp_path / 'moved'}" for a in args]
    rc, err = _cli(capsys, "train", "--resume", *moved)
    assert rc == 0 and "resuming" in err and "from step 6" in err
    assert json.loads((tmp_path / "moved" / "summary.json").read_text())["steps"] == 8
    # threads are not part of a run's identity either
    assert _cli(capsys, "train", "--resume", *moved, "threads=1")[0] == 0


# ---------------------------------------------------------------- 14-20


def test_14_a_long_row_is_never_tokenised_once_per_repetition(tmp_path, monkeypatch, capsys):
    from transformers import PreTrainedTokenizerBase

    rows = _rows(20) + [{"id": "long", "prompt": "x" * 10_000, "answer": "1", "solution": "A:1"}]
    path = _jsonl(tmp_path / "t.jsonl", rows)
    seen = []
    real = PreTrainedTokenizerBase.__call__

    def counting(self, text=None, *a, **kw):
        texts = [text] if isinstance(text, str) else list(text or [])
        seen.append(sum(len(t) for t in texts))
        return real(self, text, *a, **kw)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", counting)
    rc, err = _cli(capsys, "train", *tiny_overrides(tmp_path / "r", steps=1, **{
        "task.name": path, "task.test_fraction": 0.0, "data.n_train": 5000, "data.max_len": 64}))
    assert rc == 0, err
    assert "1 of 21 training rows (5%) are longer than data.max_len=64 tokens; dropped" in err
    assert sum(seen) < 20_000  # each short row once, the long one never (it was 2.4M characters)


def test_15_a_file_given_for_evaluation_is_evaluated_whole_and_n_is_shown(tmp_path, capsys):
    path = _jsonl(tmp_path / "t.jsonl", _rows(30))
    out = tmp_path / "e.json"
    rc, err = _cli(capsys, "eval", f"task.name={path}", "model.name=preset:nano", "eval.n=500",
                   "eval.max_new_tokens=4", "--json", str(out))
    assert rc == 0 and "eval: 30 prompts from" in err and "eval.n=500 asks for more than there are" in err
    assert json.loads(out.read_text())["preset:nano"]["n"] == 30
    assert " n " in err.replace("│", " ")  # the table has an n column
    rc, err = _cli(capsys, "eval", f"task.name={path}", "task.test_fraction=0.1", "model.name=preset:nano",
                   "eval.max_new_tokens=4", "--json", str(out))
    assert rc == 0 and "task.test_fraction=0.1 holds out" in err
    assert json.loads(out.read_text())["preset:nano"]["n"] < 30


def test_16_training_refuses_when_most_rows_are_too_long(tmp_path, capsys):
    from retort.lm.teacher import ensure_teacher

    long = [{**r, "solution": r["solution"] + " and so on" * 30} for r in _rows(15, start=100)]
    path = _jsonl(tmp_path / "t.jsonl", _rows(5) + long)
    rc, err = _cli(capsys, "train", *tiny_overrides(tmp_path / "r", steps=1, **{
        "task.name": path, "task.test_fraction": 0.0, "data.max_len": 80}))
    assert rc == 2 and "15 of 20 training rows (75%) are longer than data.max_len=80" in err
    assert "raise data.max_len" in err and not (tmp_path / "r").exists()
    with pytest.raises(DataError, match="longer than data.max_len=160 tokens and would be dropped"):
        ensure_teacher(None, [f"task.name={path}", "task.test_fraction=0"])


def test_17_teacher_cache_of_a_task_file_is_a_slug_and_a_content_hash(tmp_path):
    from retort.lm.models.load import builtin_teacher_dir, cache_dir

    path = _jsonl(tmp_path / "My Task (v2).jsonl", _rows(3))
    d = builtin_teacher_dir(str(path))
    assert d.parent == cache_dir() and d.name.startswith("teacher-My-Task-v2-") and len(d.name.split("-")[-1]) == 12
    _jsonl(path, _rows(4))
    assert builtin_teacher_dir(str(path)) != d  # an edited file gets its own teacher
    assert builtin_teacher_dir("modchain").name == "teacher-modchain"


def test_17_a_cached_teacher_trained_with_other_settings_is_not_reused(tmp_path):
    from retort.config import save_config
    from retort.lm.teacher import ensure_teacher, teacher_config

    run = teacher_config(None, [])
    save_config(run, Path(run.out) / "config.yaml")
    (Path(run.out) / "teacher.json").write_text(json.dumps({"accuracy": 0.99, "train_time_s": 1}))
    assert ensure_teacher(None, []) == Path(run.out) / "model"
    with pytest.raises(RetortError, match="trained with other settings .*task.difficulty.*--force"):
        ensure_teacher(None, ["task.difficulty.steps_max=9"])


def test_17_teacher_force_deletes_only_the_run(tmp_path):
    from retort.paths import remove_run

    run = tmp_path / "t"
    (run / "ckpt" / "step-0000001").mkdir(parents=True)
    (run / "config.yaml").write_text("x: 1")
    (run / "notes.txt").write_text("mine")
    remove_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    with pytest.raises(RetortError, match="holds no retort run"):
        remove_run(run)


def test_18_warm_started_teacher_names_its_student(tmp_path, capsys):
    from rich.console import Console

    from retort.lm.teacher import ensure_teacher

    console = Console(stderr=True)
    with pytest.raises(DataError):  # max_len=8 drops every row: the run stops right after its first line
        ensure_teacher(None, ["student.name=preset:nano", "data.max_len=8"], console=console)
    err = capsys.readouterr().err
    assert "teacher: training preset:nano on modchain" in err and "preset:teacher" not in err


def test_20_threads_setting_is_applied_and_recorded(tmp_path, capsys):
    before = torch.get_num_threads()
    train(load_config(TrainRun, None, tiny_overrides(tmp_path / "a", steps=1, threads=1)))
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["threads"] == 1
    assert torch.get_num_threads() == before  # restored after the run
    # auto: the nano preset's ops are tiny, so one thread
    train(load_config(TrainRun, None, tiny_overrides(tmp_path / "b", steps=1)))
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["threads"] == 1
    for cls in (TrainRun, TracesRun, EvalRun):
        assert load_config(cls, None, ["threads=2"]).threads == 2
    with pytest.raises(ConfigError, match="threads=-1 is out of range"):
        load_config(EvalRun, None, ["threads=-1"])


# ---------------------------------------------------------------- neighbours of the twenty


def test_a_prompt_longer_than_the_context_is_refused_before_it_is_tokenised(tmp_path, capsys):
    path = _jsonl(tmp_path / "t.jsonl", _rows(3) + [{"id": "huge", "prompt": "1 + " * 2_000_000, "answer": "1"}])
    rc, err = _cli(capsys, "eval", f"task.name={path}", "model.name=preset:nano", "eval.max_new_tokens=4")
    assert rc == 2 and "1 of 4 prompts are longer than the model's context of 512 tokens could hold" in err
    path = _jsonl(tmp_path / "t.jsonl", _rows(3) + [{"id": "long", "prompt": "1 + " * 150, "answer": "1"}])
    rc, err = _cli(capsys, "traces", f"out={tmp_path / 'o'}", f"task.name={path}", "task.test_fraction=0",
                   "teacher.name=preset:nano", "sampling.max_new_tokens=8")
    assert rc == 2 and "1 of 4 prompts do not fit the model's context of 512 tokens with max_new_tokens=8" in err


def test_a_task_file_with_a_byte_order_mark_reads(tmp_path):
    from retort.lm.tasks.files import read_rows

    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in _rows(2)).encode())
    assert [r.id for r in read_rows(str(path))] == ["r0", "r1"]


def test_traces_never_delete_a_users_file_in_their_directory(tmp_path):
    out = _traces(tmp_path / "t")
    (out / "notes.tmp").write_text("mine")
    (out / "part-00009.parquet").write_text("not a shard of this run")
    with pytest.raises(DataError, match="part-00009.parquet: a file the manifest does not list, and not a shard"):
        _traces(out)
    (out / "part-00009.parquet").unlink()
    _traces(out)
    assert (out / "notes.tmp").read_text() == "mine"


# ---------------------------------------------------------------- every command beside a user's files


def test_no_command_modifies_or_deletes_a_users_files(tmp_path, capsys):
    user = _user_files(tmp_path / "home")
    before = _hashes(user)
    task = _jsonl(user / "task.jsonl", _rows(12))
    before = _hashes(user)
    ok = [
        ("traces", f"out={user / 'traces'}", "teacher.name=preset:nano", "n_prompts=8", "shard_prompts=4",
         "sampling.n=2", "sampling.max_new_tokens=6", f"task.name={task}", "task.test_fraction=0"),
        ("traces", f"out={user / 'traces'}", "teacher.name=preset:nano", "n_prompts=8", "shard_prompts=4",
         "sampling.n=2", "sampling.max_new_tokens=6", f"task.name={task}", "task.test_fraction=0"),  # rerun
        ("curate", str(user / "traces"), "--stats"),
        ("curate", str(user / "traces"), "--out", str(user / "cur"), "--max-tokens", "6"),
        ("curate", str(user / "traces"), "--out", str(user / "cur"), "--max-tokens", "5", "--overwrite"),
        ("train", *tiny_overrides(user / "run", steps=2, **{"train.save_every": 1})),
        ("train", "--resume", *tiny_overrides(user / "run", steps=2, **{"train.save_every": 1})),
        ("eval", "-m", str(user / "run" / "model"), "eval.n=2", "eval.max_new_tokens=4", "--json",
         str(user / "eval.json")),
        ("report", str(user / "run"), str(user / "eval.json"), "-o", str(user / "report.html")),
    ]
    refused = [
        ("traces", f"out={user}", "teacher.name=preset:nano", "n_prompts=2"),
        ("curate", str(user / "traces"), "--out", str(user), "--max-tokens", "6", "--overwrite"),
        ("curate", str(user / "traces"), "--out", str(user / "model"), "--max-tokens", "6", "--overwrite"),
        ("train", *tiny_overrides(user, steps=1)),
        ("train", *tiny_overrides(user / "model", steps=1)),
        ("demo", "--out", str(user)),
        ("teacher", f"out={user}", "--force"),
    ]
    for args in ok:
        rc, err = _cli(capsys, *args)
        assert rc == 0, (args, err)
    for args in refused:
        rc, err = _cli(capsys, *args)
        assert rc == 2, (args, err)
    assert {k: v for k, v in _hashes(user).items() if k in before} == before

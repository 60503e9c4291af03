"""Progress lines when output is not a terminal (`retort.progress`): the same line, on the same
schedule, for traces, train and eval."""

import re

from conftest import tiny_overrides
from retort.progress import ProgressLines, fmt_eta

LINE = re.compile(r"^(?P<label>[\w :.-]+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) \((?P<pct>\d+)%\), "
                  r"(?P<rate>[\d.e+]+|\?) (?P=unit)/s, eta (?P<eta>\d+:\d\d:\d\d|\?)(?: \| (?P<extra>.*))?$")


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_line_every_ten_percent_or_thirty_seconds_with_rate_and_eta():
    clock = Clock()
    p = ProgressLines(None, "traces", 200, "prompts", clock=clock, enabled=True)
    for _ in range(10):  # 10 prompts a second: 5% every 1 s, a line at each 10%
        clock.t += 1
        p.advance(10, "20 rows")
    assert p.lines == ["traces: 20/200 prompts (10%), 10 prompts/s, eta 0:00:18 | 20 rows",
                       "traces: 40/200 prompts (20%), 10 prompts/s, eta 0:00:16 | 20 rows",
                       "traces: 60/200 prompts (30%), 10 prompts/s, eta 0:00:14 | 20 rows",
                       "traces: 80/200 prompts (40%), 10 prompts/s, eta 0:00:12 | 20 rows",
                       "traces: 100/200 prompts (50%), 10 prompts/s, eta 0:00:10 | 20 rows"]
    slow = ProgressLines(None, "train", 10_000, "steps", clock=clock, enabled=True)
    for _ in range(100):  # 1 step in 3 s: no 10% step for hours, but a line every 30 s
        clock.t += 3
        slow.advance(1)
    assert len(slow.lines) == 10 and slow.lines[0] == "train: 10/10000 steps (0%), 0.333 steps/s, eta 8:19:30"
    # the end is always said; a resumed run's earlier work is in done/total, not in the rate
    resumed = ProgressLines(None, "train", 100, "steps", done=90, clock=clock, enabled=True)
    clock.t += 5
    resumed.update(100)
    assert resumed.lines == ["train: 100/100 steps (100%), 2 steps/s, eta 0:00:00"]
    assert all(LINE.match(line) for line in p.lines + slow.lines + resumed.lines)
    assert fmt_eta(float("nan")) == "?" and fmt_eta(3725) == "1:02:05"


def test_nothing_on_a_terminal_or_without_a_console():
    class Terminal:
        is_terminal = True

        def print(self, *a, **k):
            raise AssertionError("printed on a terminal")

    p = ProgressLines(Terminal(), "eval", 10, "prompts")
    p.advance(10)
    assert not p.enabled and p.lines == []
    q = ProgressLines(None, "eval", 10, "prompts")
    q.advance(10)
    assert q.lines == []


def _lines(text, label):
    got = [m for m in map(LINE.match, text.splitlines()) if m]
    return [m for m in got if m["label"] == label]


def test_traces_train_and_eval_print_the_same_lines_when_piped(tmp_path, capsys):
    from retort.cli import main

    def run(*args):  # under pytest, stderr is not a terminal: as `retort ... 2>&1 | cat`
        assert main(list(args)) == 0
        return capsys.readouterr().err

    err = run("traces", f"out={tmp_path / 'tr'}", "teacher.name=preset:nano", "n_prompts=20", "shard_prompts=4",
              "sampling.n=2", "sampling.max_new_tokens=4")
    got = _lines(err, "traces")
    assert [m["done"] for m in got] == ["4", "8", "12", "16", "20"] and got[-1]["extra"].startswith("40 rows")
    assert {m["unit"] for m in got} == {"prompts"} and got[-1]["eta"] == "0:00:00"
    got = _lines(run("train", *tiny_overrides(tmp_path / "run", steps=10)), "train")
    assert [m["done"] for m in got] == [str(i) for i in range(1, 11)]  # 10 steps: one a step (10%)
    assert got[-1]["total"] == "10" and got[-1]["extra"].startswith("loss ")
    got = _lines(run("eval", "-m", "preset:nano", "eval.n=10", "eval.batch_size=5", "eval.max_new_tokens=4"),
                 "eval preset:nano")
    assert [(m["done"], m["total"], m["unit"]) for m in got] == [("5", "10", "prompts"), ("10", "10", "prompts")]

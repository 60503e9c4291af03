"""Progress of a long curate step."""

from __future__ import annotations


class CurateProgress:
    """A rich progress bar (prompts, ETA) on a terminal, a line per shard otherwise; a no-op without console."""

    def __init__(self, console, label: str, total: int, unit: str):
        self.console, self.label, self.total, self.unit, self.done = console, label, total, unit, 0
        self.bar = None
        if console is not None and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn(f"{unit} eta"), TimeRemainingColumn())

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=self.total)
        return self

    def __call__(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, advance=n)
        elif self.console is not None:
            self.console.print(f"curate: {self.label} {self.done}/{self.total} {self.unit}")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

"""What the benchmark scripts that train students per seed share: writing the results file so that a
killed run never leaves half a JSON, and the per-seed accuracy table BENCHMARKS.md prints."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, results: dict) -> None:
    """`results` as JSON at `path`, written beside it and moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def accuracy_table(rows: dict, seeds: list[str], label: str) -> list[str]:
    """Markdown lines: one row per entry of `rows` ({name: {"accuracy": {seed: value}, "mean", "std"}}),
    its accuracy per seed ("-" where missing) and mean +- std; `label` heads the first column."""
    lines = [f"| {label} | " + " | ".join(f"seed {s}" for s in seeds) + " | mean +- std |",
             "|---|" + "---:|" * (len(seeds) + 1)]
    for name, row in rows.items():
        accs = [f"{row['accuracy'][s]:.3f}" if s in row["accuracy"] else "-" for s in seeds]
        lines.append(f"| {name} | {' | '.join(accs)} | {row['mean']:.3f} +- {row['std']:.3f} |")
    return lines

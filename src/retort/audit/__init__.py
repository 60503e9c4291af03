"""Audits that measure what a trained model leaks about its private training records (`retort
audit`): canary exposure (`exposure`), membership inference (`mia`), and the private corpus with
canaries they are measured on (`canaries`). This package holds the arithmetic and the results'
shape; each track scores its own models (`Track.audit`) and calls it.

An audit result (one per model; `audit.json` holds {"kind": "retort-audit", "models": {label: result}}):

    {"model": PATH, "run_dir": RUN or null, "epsilon": the run's privacy.epsilon or null (no DP),
     "canaries": {"format", "space_size", "max_exposure", "method", "results": [{secret, repeats,
                  rank, exposure, ...}], "by_repeats": {"0": mean exposure, "1": ..., "20": ...}},
     "mia": {"members", "nonmembers" (where the rows came from), "loss": {auc, tpr@fpr=0.001,
             tpr@fpr=0.01, advantage, ...}, "reference": {...} or null, "reference_model"}}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .canaries import canary_prompt, read_manifest, write_corpus
from .exposure import CanaryFormat, exposures
from .mia import loss_attack, reference_attack

KIND = "retort-audit"
AUDIT_FILE = "audit.json"

__all__ = [
    "AUDIT_FILE",
    "KIND",
    "CanaryFormat",
    "canary_prompt",
    "canary_result",
    "exposures",
    "loss_attack",
    "read_manifest",
    "read_results",
    "reference_attack",
    "results_table",
    "run_privacy",
    "write_corpus",
    "write_results",
]


def canary_result(fmt: CanaryFormat, canaries: list[dict], ranked: dict[str, dict]) -> dict:
    """The `canaries` part of a result: each canary's rank and exposure, and the mean exposure of
    the canaries inserted the same number of times (repeats 0: the controls, never inserted)."""
    rows = [{"secret": c["secret"], "repeats": int(c.get("repeats", 0)), **ranked[c["secret"]]} for c in canaries]
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(str(r["repeats"]), []).append(r["exposure"])
    return {"format": fmt.format, "space_size": fmt.size, "max_exposure": math.log2(fmt.size),
            "method": rows[0]["method"], "results": rows,
            "by_repeats": {k: sum(v) / len(v) for k, v in sorted(by.items(), key=lambda kv: int(kv[0]))}}


def run_privacy(run_dir) -> dict | None:
    """The `privacy` section of a finished run's summary.json (epsilon, delta, ...), else None."""
    path = Path(run_dir) / "summary.json" if run_dir else None
    if path is None or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    privacy = summary.get("privacy") if isinstance(summary, dict) else None
    return privacy if isinstance(privacy, dict) else None


def _f(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def results_table(results: dict):
    """A console table: per model its epsilon, canary exposure by repeats, MIA AUC and low-FPR TPR."""
    from rich.table import Table

    repeats = sorted({k for r in results.values() for k in ((r.get("canaries") or {}).get("by_repeats") or {})},
                     key=int)
    has_ref = any((r.get("mia") or {}).get("reference") for r in results.values())
    table = Table(title="retort audit")
    heads = ["model", "epsilon", *[f"exposure x{k}" if k != "0" else "exposure unseen" for k in repeats]]
    heads += ["max exp.", "MIA AUC", "TPR@1%FPR", "TPR@0.1%FPR"] + (["ref AUC", "ref TPR@1%"] if has_ref else [])
    for h in heads:
        table.add_column(h, justify="left" if h == "model" else "right")
    for label, r in results.items():
        can, mia = r.get("canaries") or {}, r.get("mia") or {}
        loss, ref = mia.get("loss") or {}, mia.get("reference") or {}
        eps = r.get("epsilon")
        row = [label, "inf" if eps is None else _f(float(eps), 2)]
        row += [_f((can.get("by_repeats") or {}).get(k), 2) for k in repeats]
        row += [_f(can.get("max_exposure"), 2) if can else "-", _f(loss.get("auc")), _f(loss.get("tpr@fpr=0.01")),
                _f(loss.get("tpr@fpr=0.001"))]
        if has_ref:
            row += [_f(ref.get("auc")), _f(ref.get("tpr@fpr=0.01"))]
        table.add_row(*row)
    table.caption = ("exposure = log2|space| - log2(rank of the true secret) in bits, mean over the canaries "
                     "inserted that many times (unseen: never inserted); MIA: loss-threshold attack, members vs "
                     "held-out rows (0.5 = chance); ref: calibrated by --reference; TPR '-' where there are too "
                     "few non-members to measure that FPR")
    return table


def write_results(path, results: dict) -> None:
    from ..paths import atomic_write_text

    atomic_write_text(path, json.dumps({"kind": KIND, "models": results}, indent=2))


def read_results(path) -> dict | None:
    """label -> result of an audit file, or None when `path` is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("kind") == KIND and isinstance(data.get("models"), dict):
        return data["models"]
    return None

"""The report's privacy section: what each model leaks (`retort audit`: canary exposure by how
often a secret was inserted, membership-inference AUC and TPR at low FPR) beside the privacy
budget it was trained under (summary.json's `privacy.epsilon`; no DP = epsilon infinite), and a
figure of utility against epsilon.

Audits come from `audit.json` in a run directory given to the report, or from an audit file given
as an input (`retort audit --out FILE`); an audit joins the row of the run it audited (its
`run_dir`, or the model directory), else it is listed under its own label."""

from __future__ import annotations

import math
from pathlib import Path

from .html import esc, fmt_float, img, table

INF_LABEL = "∞ (no DP)"


def _epsilon(run):
    privacy = run.summary.get("privacy") if run is not None else None
    eps = privacy.get("epsilon") if isinstance(privacy, dict) else None
    return float(eps) if isinstance(eps, (int, float)) and not isinstance(eps, bool) else None


def _same(a, b) -> bool:
    try:
        return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()
    except (OSError, TypeError):
        return False


def _join(rows: list, runs: list, audit_files: dict[str, dict]) -> list[tuple]:
    """(name, its `Row` or None, its audit result) for every audit found (rows, runs: `retort.report`'s)."""
    out, taken = [], set()
    for run in runs:
        from ..audit import AUDIT_FILE, read_results

        found = read_results(run.path / AUDIT_FILE) if (run.path / AUDIT_FILE).is_file() else None
        for result in (found or {}).values():
            row = next((r for r in rows if r.run is run), None)
            out.append((run.name, row, result))
            taken.add(id(result))
    for source, results in audit_files.items():
        for label, result in results.items():
            row = next((r for r in rows if r.run is not None and (
                _same(result.get("run_dir"), r.run.path) or _same(result.get("model"), r.run.path / "model"))), None)
            out.append((row.name if row is not None else f"{label} ({Path(source).name})", row, result))
    return out


def utility_vs_epsilon(points: list[tuple[str, float | None, float]]) -> str | None:
    """(name, epsilon or None for no DP, utility): epsilon on a log axis, no-DP runs at a last
    tick marked infinite; None unless some point has a finite epsilon."""
    from .plots import COLORS, _data_uri, _figure, _label

    finite = [e for _, e, _ in points if e is not None and e > 0]
    if not finite:
        return None
    inf_x = max(finite) * 4
    fig, ax = _figure(8.0, 4.2)
    ax.set_xscale("log")
    for i, (name, eps, util) in enumerate(points):
        ax.scatter([inf_x if eps is None else eps], [util], color=COLORS[i % len(COLORS)], s=40, zorder=3,
                   label=_label(f"{i + 1}: {name}"))
        ax.annotate(str(i + 1), (inf_x if eps is None else eps, util), textcoords="offset points", xytext=(4, 4),
                    fontsize="small")
    ax.minorticks_off()  # the log axis's own minor labels (4x10^0) would crowd the budgets'
    ticks = sorted({*finite, inf_x})
    ax.set_xticks(ticks)
    ax.set_xticklabels([INF_LABEL if t == inf_x else f"{t:g}" for t in ticks])
    ax.set_xlabel("privacy budget epsilon (log scale; lower = more private)")
    ax.set_ylabel("utility (accuracy)")
    ax.set_title("Utility vs privacy budget")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    return _data_uri(fig)


def privacy_section(rows: list, runs: list, audit_files: dict[str, dict]) -> list[str]:
    """The section's HTML pieces; none when no input has an audit or a privacy budget."""
    audits = _join(rows, runs, audit_files)
    private = [r for r in rows if _epsilon(r.run) is not None]
    if not audits and not private:
        return []
    details = ["<h2>Privacy</h2>"]
    if audits:
        repeats = sorted({k for _, _, a in audits for k in ((a.get("canaries") or {}).get("by_repeats") or {})},
                         key=int)
        heads = ["model", "epsilon", "utility", *[f"exposure x{k}" if k != "0" else "exposure unseen" for k in repeats],
                 "max exposure", "MIA AUC", "TPR @ 1% FPR", "TPR @ 0.1% FPR", "ref. MIA AUC"]
        body = []
        for name, row, a in audits:
            can, mia = a.get("canaries") or {}, a.get("mia") or {}
            loss, ref = mia.get("loss") or {}, mia.get("reference") or {}
            eps = a.get("epsilon") if a.get("epsilon") is not None else _epsilon(row.run if row else None)
            util = row.eval.get("accuracy") if row is not None else None
            body.append([(esc(name), False), (esc(INF_LABEL if eps is None else fmt_float(eps, 2)), True),
                         (esc(fmt_float(util, 4)), True),
                         *[(esc(fmt_float((can.get("by_repeats") or {}).get(k), 2)), True) for k in repeats],
                         (esc(fmt_float(can.get("max_exposure"), 2)), True), (esc(fmt_float(loss.get("auc"), 3)), True),
                         (esc(fmt_float(loss.get("tpr@fpr=0.01"), 3)), True),
                         (esc(fmt_float(loss.get("tpr@fpr=0.001"), 3)), True), (esc(fmt_float(ref.get("auc"), 3)), True)])
        details += [('<p class="sub">Canary exposure (Carlini et al. 2019): log2 |candidate space| - log2 rank of the '
                    "true secret, in bits, mean over the canaries inserted that many times (unseen: never inserted; "
                    "max exposure: a secret ranked first). MIA: loss-threshold membership inference, training rows "
                    "vs held-out rows (AUC 0.5 = chance); ref.: calibrated by a reference model. "
                    "'-' where not measured.</p>"), table(heads, body)]
    points = [(r.name, _epsilon(r.run), r.eval.get("accuracy")) for r in rows if r.run is not None]
    points = [p for p in points if isinstance(p[2], (int, float)) and math.isfinite(p[2])]
    fig = utility_vs_epsilon(points)
    if fig:
        details.append(img(fig, "utility vs privacy budget epsilon"))
    return details

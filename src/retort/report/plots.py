"""The report's figures: matplotlib charts rendered to PNG and returned as base64 data URIs.

Each function returns a `data:image/png;base64,...` string, or None when there is nothing to plot,
so the page can leave the section out. Figures are drawn with the Agg canvas directly rather than
through pyplot: that needs no display, changes no process-wide backend, and keeps no figure alive.
"""

from __future__ import annotations

import base64
import io
import math

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _label(text: str) -> str:
    # Matplotlib reads "$...$" as mathtext (a bad formula raises) and hides labels that start
    # with "_".
    text = str(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _figure(width=7.5, height=4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _data_uri(fig) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in rows if _num(r.get("step")) and _num(r.get(key))]
    points.sort()
    return [p[0] for p in points], [p[1] for p in points]


def _lines(curves: list[tuple[str, list[dict]]], key: str, ylabel: str, title: str,
           log_if_positive: bool, marker: str | None = None) -> str | None:
    series = [(name, *_series(rows, key)) for name, rows in curves]
    series = [s for s in series if s[1]]
    if not series:
        return None
    fig, ax = _figure()
    for i, (name, xs, ys) in enumerate(series):
        ax.plot(xs, ys, label=_label(name), color=COLORS[i % len(COLORS)], linewidth=1.4,
                marker=marker, markersize=4)
    if log_if_positive and all(y > 0 for _, _, ys in series for y in ys):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _data_uri(fig)


def loss_curves(curves: list[tuple[str, list[dict]]]) -> str | None:
    """Training loss vs step, one line per run; `curves` is [(name, metrics rows)]."""
    return _lines(curves, "loss", "training loss", "Training loss", log_if_positive=True)


def eval_curves(curves: list[tuple[str, list[dict]]]) -> str | None:
    """eval/accuracy vs step, one line per run that logged evaluations."""
    return _lines(curves, "eval/accuracy", "accuracy", "Evaluation accuracy during training",
                  log_if_positive=False, marker="o")


def accuracy_vs_tokens(points: list[tuple[str, float, float]]) -> str | None:
    """Scatter of (name, mean completion tokens, accuracy), each point labelled with its name."""
    points = [p for p in points if _num(p[1]) and _num(p[2])]
    if not points:
        return None
    fig, ax = _figure(7.5, 4.5)
    for i, (name, tokens, acc) in enumerate(points):
        ax.scatter([tokens], [acc], color=COLORS[i % len(COLORS)], s=40, zorder=3)
        ax.annotate(_label(name), (tokens, acc), textcoords="offset points", xytext=(6, 4),
                    fontsize="small")
    # Room on the right and top so labels of the extreme points are not clipped.
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    span = max(xs) - min(xs) or max(abs(max(xs)), 1.0)
    ax.set_xlim(min(xs) - 0.1 * span, max(xs) + 0.45 * span)
    ax.set_ylim(min(0.0, min(ys)), max(1.05, max(ys) * 1.1))
    ax.set_xlabel("mean completion tokens per answer")
    ax.set_ylabel("accuracy (greedy pass@1)")
    ax.set_title("Accuracy vs answer length")
    return _data_uri(fig)

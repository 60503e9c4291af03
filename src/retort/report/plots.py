"""The report's figures: matplotlib charts rendered to PNG and returned as base64 data URIs.

Each function returns a `data:image/png;base64,...` string, or None when there is nothing to plot,
so the page can leave the section out. Figures are drawn with the Agg canvas directly rather than
through pyplot: that needs no display, changes no process-wide backend, and keeps no figure alive.
"""

from __future__ import annotations

import base64
import io
import math
import textwrap

MARKER_SIZE = 40  # scatter markers, points^2
LEGEND_ROWS = 20
LEGEND_WIDTH = 40  # characters a legend line
IN_FIGURE_RINGS = 40  # how far a point label is sought inside the figure before outside it
# Where a label goes around its point, in order of preference: (dx, dy) of the direction.
DIRECTIONS = [(1, 1), (1, 0), (1, -1), (0, 1), (0, -1), (-1, 1), (-1, 0), (-1, -1)]
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


def _data_uri(fig, layout: bool = True) -> str:
    if layout:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in rows if _num(r.get("step")) and _num(r.get(key))]
    points.sort()
    return [p[0] for p in points], [p[1] for p in points]


def _lines(curves: list[tuple[str, list[dict]]], key: str, ylabel: str, title: str,
           log_if_positive: bool, marker: str | None = None, min_points: int = 1) -> str | None:
    series = [(name, *_series(rows, key)) for name, rows in curves]
    series = [s for s in series if len(s[1]) >= min_points]
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
    """eval/accuracy vs step, one line per run that logged at least two evaluations (a run
    evaluated once has no curve: `single_evals` gives its value, shown as text)."""
    return _lines(curves, "eval/accuracy", "accuracy", "Evaluation accuracy during training",
                  log_if_positive=False, marker="o", min_points=2)


def single_evals(curves: list[tuple[str, list[dict]]], key: str = "eval/accuracy") -> list[tuple[str, float, float]]:
    """(name, step, value) of each run that logged `key` exactly once: a point, not a curve."""
    out = []
    for name, rows in curves:
        xs, ys = _series(rows, key)
        if len(xs) == 1:
            out.append((name, xs[0], ys[0]))
    return out


def reliability_diagram(models: list[tuple[str, list[dict]]]) -> str | None:
    """Accuracy vs confidence per equal-width bin (the bins a classifier evaluation reports), one
    line per model, the diagonal for perfect calibration; None when no model has bins."""
    series = [(name, [b for b in bins if isinstance(b, dict) and b.get("n") and _num(b.get("confidence"))])
              for name, bins in models if isinstance(bins, list)]
    series = [(name, bins) for name, bins in series if bins]
    if not series:
        return None
    fig, ax = _figure(5.5, 5.0)
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfect calibration")
    for i, (name, bins) in enumerate(series):
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], label=_label(name),
                color=COLORS[i % len(COLORS)], marker="o", markersize=3, linewidth=1.2)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability (test split)")
    ax.legend(fontsize="small")
    return _data_uri(fig)


def accuracy_vs_tokens(points: list[tuple[str, float, float]]) -> str | None:
    """Scatter of (name, mean completion tokens, accuracy): each point numbered, the legend names
    it; None when no point has both numbers."""
    points = [p for p in points if _num(p[1]) and _num(p[2])]
    if not points:
        return None
    fig, _ = scatter_figure(points)
    return _data_uri(fig, layout=False)  # laid out already: moving the axes would undo the placing


def scatter_figure(points: list[tuple[str, float, float]]):
    """The accuracy-vs-tokens figure for points with finite numbers, and its point labels.

    Names would collide when two models land close together (same student, similar methods), so
    the plot carries short numbers and the legend the names; the numbers are then placed so that
    none overlaps another or any marker (`_place_labels`).
    """
    # Tall enough for the legend (one name a line, up to LEGEND_ROWS lines a column).
    columns = math.ceil(len(points) / LEGEND_ROWS)
    fig, ax = _figure(9.0, max(4.5, 1.0 + 0.22 * min(len(points), LEGEND_ROWS)))
    for i, (name, tokens, acc) in enumerate(points, 1):
        ax.scatter([tokens], [acc], color=COLORS[(i - 1) % len(COLORS)], s=MARKER_SIZE, zorder=3,
                   label=_legend_name(i, name))
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    span = max(xs) - min(xs) or max(abs(max(xs)), 1.0)
    ax.set_xlim(min(xs) - 0.1 * span, max(xs) + 0.15 * span)
    ax.set_ylim(min(0.0, min(ys)), max(1.05, max(ys) * 1.1))
    ax.set_xlabel("mean completion tokens per answer")
    ax.set_ylabel("accuracy (greedy pass@1)")
    ax.set_title("Accuracy vs answer length")
    # Outside the axes, so it can cover no point.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize="small",
              ncols=columns)
    fig.tight_layout()  # before placing: placement works in pixels, which a layout change moves
    labels = [ax.annotate(str(i), (tokens, acc), textcoords="offset pixels", xytext=(0, 0),
                          ha="left", va="bottom", fontsize="small")
              for i, (_, tokens, acc) in enumerate(points, 1)]
    _place_labels(fig, ax, labels)
    return fig, labels


def _legend_name(i: int, name: str) -> str:
    # Long names (run directories) wrap, or the legend would squeeze the axes to nothing.
    return textwrap.fill(f"{i}: {_label(name).strip()}", LEGEND_WIDTH, subsequent_indent="   ")


def _place_labels(fig, ax, labels) -> None:
    """Move each label to the first spot, on rings ever farther out around its point, where it
    overlaps no marker, no label already placed and not the legend. Deterministic: same points,
    same picture. A label that had to move off the first ring gets a leader line to its point."""
    from itertools import count

    from matplotlib.lines import Line2D
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    radius = (MARKER_SIZE ** 0.5) / 2 * fig.dpi / 72  # marker radius in pixels
    centers = [ax.transData.transform(label.xy) for label in labels]
    taken = [Bbox.from_extents(x - radius, y - radius, x + radius, y + radius) for x, y in centers]
    legend = ax.get_legend()
    if legend is not None:
        taken.append(legend.get_window_extent(renderer))
    inside = fig.bbox
    gap = 2.0  # pixels kept free between boxes

    def free(box):
        grown = box.padded(gap)
        return not any(grown.overlaps(t) for t in taken)

    for label, (px, py) in zip(labels, centers):
        label.set_in_layout(False)
        extent = label.get_window_extent(renderer)
        w, h = extent.width, extent.height
        for ring in count():
            d = radius + 2 * gap + ring * h  # ring 0 just clears the point's own marker
            # Off-figure spots only once the figure is full: a clipped label still overlaps none.
            spots = [_spot(px, py, w, h, d, dx, dy) for dx, dy in DIRECTIONS]
            spots = [b for b in spots if free(b) and (ring > IN_FIGURE_RINGS or (
                inside.contains(b.x0, b.y0) and inside.contains(b.x1, b.y1)))]
            if spots:
                break
        box = spots[0]
        label.xyann = (box.x0 - px, box.y0 - py)
        taken.append(box)
        if ring > 0:
            # Leader from the point to the nearest point of the label's box.
            end = (min(max(px, box.x0), box.x1), min(max(py, box.y0), box.y1))
            (x0, y0), (x1, y1) = ax.transData.inverted().transform([(px, py), end])
            ax.add_line(Line2D([x0, x1], [y0, y1], color="#999999", linewidth=0.6, zorder=2))


def _spot(px, py, w, h, d, dx, dy):
    """The box of a w x h label at distance d from (px, py) in direction (dx, dy)."""
    from matplotlib.transforms import Bbox

    x0 = px + d if dx > 0 else px - d - w if dx < 0 else px - w / 2
    y0 = py + d if dy > 0 else py - d - h if dy < 0 else py - h / 2
    return Bbox.from_bounds(x0, y0, w, h)


def generator_samples(models: list[tuple[str, dict]]) -> str | None:
    """One panel per generator: its 2-D samples as a scatter, its sequences as paths (frame by frame,
    the first frame marked), or its images as a grid (sorted by label); None when no row carries
    samples."""
    panels = [(name, e) for name, e in models
              if any(isinstance(e.get(k), list) for k in ("points", "images", "sequences"))]
    if not panels:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows), dpi=90)
    FigureCanvasAgg(fig)
    for i, (name, e) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_title(_label("\n".join(textwrap.wrap(name, 34))), fontsize="small")
        if isinstance(e.get("points"), list):
            pts = [p for p in e["points"] if isinstance(p, list) and len(p) == 2 and all(_num(v) for v in p)]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=2, alpha=0.5, color=COLORS[i % len(COLORS)])
            ax.set_aspect("equal", adjustable="datalim")
            ax.grid(True, alpha=0.3)
        elif isinstance(e.get("sequences"), list):
            for j, seq in enumerate(e["sequences"][:6]):
                pts = [p for p in seq if isinstance(p, list) and len(p) == 2 and all(_num(v) for v in p)]
                if not pts:
                    continue
                c = COLORS[j % len(COLORS)]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=2, lw=0.8, alpha=0.7, color=c)
                ax.plot([pts[0][0]], [pts[0][1]], "s", ms=5, color=c)
            ax.set_aspect("equal", adjustable="datalim")
            ax.grid(True, alpha=0.3)
        else:
            imgs = e["images"]
            k = len(imgs)
            side = math.ceil(math.sqrt(k))
            h, w = len(imgs[0]), len(imgs[0][0])
            canvas = [[1.0] * (side * (w + 1)) for _ in range(side * (h + 1))]
            for j, img in enumerate(imgs):
                r, c = divmod(j, side)
                for y in range(h):
                    for x in range(w):
                        canvas[r * (h + 1) + y][c * (w + 1) + x] = (img[y][x] + 1) / 2
            ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
    return _data_uri(fig)

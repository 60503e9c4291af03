"""Rendering the report page: rows and runs in, one self-contained HTML string out.

Owns the page layout, its inline CSS, value formatting ("-" for anything missing) and escaping:
every string that came from an input file goes through `esc` before it reaches the page. What a
track shows of its own rows (its comparison table, figures, samples) comes from the track's report
module (`retort.track.TrackEntry.report`), built from the helpers here.
"""

from __future__ import annotations

import datetime
import html
import math

from . import plots


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.65rem; }
th { background: #f4f4f4; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { max-width: 100%; overflow-x: auto; margin: 0.8rem 0; } .scroll table { margin: 0; }
td.path { word-break: break-all; min-width: 12rem; }
img { max-width: 100%; display: block; margin: 0.8rem 0; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: 0.6rem; white-space: pre-wrap;
      word-break: break-word; font-size: 0.85rem; margin: 0.2rem 0 1rem; }
.ok { color: #1a7f37; font-weight: 600; } .bad { color: #c62828; font-weight: 600; }
footer { margin-top: 3rem; color: #666; font-size: 0.85rem; border-top: 1px solid #ddd; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pct(v) -> str:
    return f"{100 * v:.1f}%" if num(v) else "-"


def fmt_float(v, digits=1) -> str:
    return f"{v:,.{digits}f}" if num(v) else "-"


def fmt_int(v) -> str:
    return f"{int(v):,}" if num(v) else "-"


def fmt_params(v) -> str:
    if not num(v):
        return "-"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return str(int(v))


def table(headers: list[str], body: list[list[tuple[str, bool | str]]]) -> str:
    """`body` cells are (already-escaped html, kind): kind True for a number, "path" for a path or
    model id (may break anywhere), False for other text."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    # Inside a scrolling div: a table wider than the page scrolls instead of widening the page.
    lines = ['<div class="scroll">', "<table>", f"<tr>{head}</tr>"]
    for cells in body:
        tds = "".join(f'<td class="n">{c}</td>' if kind is True else
                      f'<td class="path">{c}</td>' if kind == "path" else f"<td>{c}</td>"
                      for c, kind in cells)
        lines.append(f"<tr>{tds}</tr>")
    lines += ["</table>", "</div>"]
    return "\n".join(lines)


def runs_table(runs) -> str | None:
    """What each training run was: method, student, data source, task, budget."""
    if not runs:
        return None

    def get(config, *path):
        for key in path:
            config = config.get(key) if isinstance(config, dict) else None
        return "-" if config is None else config

    body = []
    for run in runs:
        c, s = run.config, run.summary
        stopped = s.get("stopped_early")
        body.append([(esc(run.name), False), (esc(get(c, "method")), False),
                     (esc(get(c, "student", "name")), "path"),  # hub ids can be long
                     (esc(get(c, "data", "source")), False),
                     (esc(get(c, "task", "name")), False), (esc(fmt_int(run.steps)), True),
                     (esc(fmt_int(s.get("tokens"))), True), (esc(fmt_float(s.get("train_time_s"))), True),
                     (esc("-" if stopped is None else ("yes" if stopped else "no")), False),
                     (esc(run.path), "path")])
    headers = ["run", "method", "student", "data source", "task", "steps", "tokens",
               "train time (s)", "stopped early", "directory"]
    return table(headers, body)


def img(uri: str | None, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="{uri}">' if uri else ""




def evaluated_on(rows) -> str:
    """'task (split), ...' of the rows' evaluations, or ''."""
    pairs = {(r.eval.get("task"), r.eval.get("split")) for r in rows if r.eval.get("task")}
    return ", ".join(f"{t} ({s})" if s else str(t) for t, s in sorted(pairs, key=str))


def generic_table(rows) -> str:
    """The comparison of a track with no report module of its own: the numbers every evaluation may have."""
    keys = sorted({k for r in rows for k, v in r.eval.items() if num(v) and k not in ("n", "params")})[:8]
    body = [[(esc(r.name), False), (esc(fmt_params(r.params)), True), (esc(fmt_int(r.eval.get("n"))), True),
             *[(esc(fmt_float(r.eval.get(k), 4)), True) for k in keys], (esc(fmt_float(r.train_time)), True),
             (esc(fmt_int(r.steps)), True)] for r in rows]
    return table(["model / run", "params", "eval n", *keys, "train time (s)", "steps"], body)


def render(rows, runs, title: str, inputs: list[str], parts: list) -> str:
    """The whole page; `parts`: each track's `ReportParts` for its rows, in the order the rows came.
    Sections with no data are left out rather than shown empty."""
    loss = plots.loss_curves([(run.name, run.train) for run in runs])
    evals = plots.eval_curves([(run.name, run.evals) for run in runs])
    once = plots.single_evals([(run.name, run.evals) for run in runs])
    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="sub">{len(rows)} model(s), {len(runs)} training run(s)</p>',
            "<h2>Comparison</h2>", *[x for p in parts for x in p.comparison]]
    body += [x for p in parts for x in p.details]
    table_ = runs_table(runs)
    if table_:
        body += ["<h2>Training runs</h2>", table_]
    if loss or evals or once:
        body += ["<h2>Training curves</h2>", img(loss, "training loss vs step"),
                 img(evals, "evaluation accuracy vs step")]
    if once:  # one evaluation is a value, not a curve
        body.append('<p class="sub">Evaluated once during training (no curve): '
                    + "; ".join(f"{esc(name)}: accuracy {esc(fmt_float(value, 4))} at step {esc(fmt_int(step))}"
                                for name, step, value in once) + "</p>")
    body += [x for p in parts for x in p.end]

    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    items = "".join(f"<li><code>{esc(d)}</code></li>" for d in inputs)
    body.append(f"<footer><p>Generated by retort at {esc(now)} from:</p><ul>{items}</ul></footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(b for b in body if b) + "\n</body>\n</html>\n")

"""Rendering the report page: rows and runs in, one self-contained HTML string out.

Owns the page layout, its inline CSS, value formatting ("-" for anything missing) and escaping:
every string that came from an input file goes through `esc` before it reaches the page.
"""

from __future__ import annotations

import datetime
import html
import math
import re

from . import plots

SAMPLES_PER_ROW = 3
KEYED_METRIC = re.compile(r"^(pass|maj)@(\d+)$")

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


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pct(v) -> str:
    return f"{100 * v:.1f}%" if _num(v) else "-"


def _float(v, digits=1) -> str:
    return f"{v:,.{digits}f}" if _num(v) else "-"


def _int(v) -> str:
    return f"{int(v):,}" if _num(v) else "-"


def _params(v) -> str:
    if not _num(v):
        return "-"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return str(int(v))


def _table(headers: list[str], body: list[list[tuple[str, bool | str]]]) -> str:
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


def _keyed_metrics(rows) -> list[str]:
    """pass@K / maj@K keys present in any row, pass before maj, then by K."""
    keys = {k for r in rows for k in r.eval if KEYED_METRIC.match(k)}

    def order(key):
        kind, k = KEYED_METRIC.match(key).groups()
        return (kind != "pass", int(k))

    return sorted(keys, key=order)


def comparison_table(rows) -> str:
    keyed = _keyed_metrics(rows)
    sampled = any("pass@1_sampled" in r.eval for r in rows)
    headers = ["model / run", "params", "eval n", "accuracy", *keyed]
    headers += ["pass@1 (sampled)"] if sampled else []
    # fidelity to a reference (`retort eval --fidelity-to`), beside accuracy, when any row has it
    fid = [k for k in ("agree_answer", "agree_top1") if any(k in r.eval for r in rows)]
    kl = any("kl_ref_model" in r.eval for r in rows)
    headers += [{"agree_answer": "same answer as ref", "agree_top1": "same top-1 token as ref"}[k] for k in fid]
    headers += ["KL(ref || model) / token"] if kl else []
    headers += ["mean tokens / answer", "train time (s)", "steps"]
    body = []
    for r in rows:
        e = r.eval
        cells = [(esc(r.name), False), (esc(_params(r.params)), True),
                 (esc(_int(e.get("n"))), True), (esc(_pct(e.get("accuracy"))), True)]
        cells += [(esc(_pct(e.get(k))), True) for k in keyed]
        cells += [(esc(_pct(e.get("pass@1_sampled"))), True)] if sampled else []
        cells += [(esc(_pct(e.get(k))), True) for k in fid]
        cells += [(esc(_float(e.get("kl_ref_model"), 3)), True)] if kl else []
        cells += [(esc(_float(e.get("mean_tokens"))), True), (esc(_float(r.train_time)), True),
                  (esc(_int(r.steps)), True)]
        body.append(cells)
    return _table(headers, body)


def classifier_table(rows) -> str:
    """The comparison of classifiers: last-step test accuracy, the test accuracy at the evaluation
    with the best validation accuracy, calibration, and agreement with the run's teacher."""
    headers = ["model / run", "params", "test n", "accuracy (last)", "accuracy at best val (step)", "ECE", "NLL",
               "same top-1 as teacher", "KL(teacher || model)", "train time (s)", "steps"]
    body = []
    for r in rows:
        e = r.eval
        best = _pct(e.get("test_at_best_val"))
        if _num(e.get("best_val_step")):
            best += f" ({int(e['best_val_step'])})"
        body.append([(esc(r.name), False), (esc(_params(r.params)), True), (esc(_int(e.get("n"))), True),
                     (esc(_pct(e.get("accuracy"))), True), (esc(best), True), (esc(_float(e.get("ece"), 4)), True),
                     (esc(_float(e.get("nll"), 3)), True), (esc(_pct(e.get("agree_top1"))), True),
                     (esc(_float(e.get("kl_teacher"), 3)), True), (esc(_float(r.train_time)), True),
                     (esc(_int(r.steps)), True)])
    return _table(headers, body)


def generator_table(rows) -> str:
    """Generators (track=diffuse): NFE and sampling time beside the distribution metrics of their kind."""
    images = any("fd" in r.eval for r in rows)
    headers = ["model / run", "params", "NFE", *(["FD", "FD floor (real vs real)", "label entropy", "label match",
                                                  "within-class diversity"] if images else
                                                 ["SWD / noise floor", "MMD^2", "modes", "recall", "precision"]),
               "s / 1k samples", "train time (s)", "steps"]
    dt = any(isinstance(r.eval.get("first_step"), dict) for r in rows)
    if dt:
        headers[-3:-3] = ["step-1 spread", "step-1 to data"]
    body = []
    for r in rows:
        e = r.eval
        if images:
            vals = [_float(e.get("fd"), 2), _float(e.get("fd_floor"), 2), _float(e.get("label_entropy"), 3),
                    _pct(e.get("label_match")), _float(e.get("within_class_diversity"), 2)]
        else:
            modes = f"{e['modes_covered']}/{e['modes']}" if _num(e.get("modes")) else "-"
            vals = [_float(e.get("swd_ratio"), 2), _float(e.get("mmd2"), 5), modes, _pct(e.get("recall")),
                    _pct(e.get("precision"))]
        if dt:
            fs = e.get("first_step") if isinstance(e.get("first_step"), dict) else {}
            vals += [_float(fs.get("spread"), 3), _float(fs.get("to_data"), 3)]
        body.append([(esc(r.name), False), (esc(_params(r.params)), True), (esc(_int(e.get("nfe"))), True),
                     *[(esc(v), True) for v in vals], (esc(_float(e.get("seconds_per_1k"), 3)), True),
                     (esc(_float(r.train_time)), True), (esc(_int(r.steps)), True)])
    return _table(headers, body)


def generator_tables(rows) -> list[str]:
    """One table per kind of data (points, images): their metrics differ."""
    points = [r for r in rows if "swd_ratio" in r.eval]
    images = [r for r in rows if "fd" in r.eval]
    return [generator_table(g) for g in (points, images) if g]


def _generators(rows) -> bool:
    return any("swd_ratio" in r.eval or "fd" in r.eval for r in rows)


def provenance_table(rows) -> str | None:
    """Rows evaluated with `retort eval --provenance`: category shares overall, by outcome, by position."""
    cats = ("teacher", "student", "shared", "boosted")
    have = [r for r in rows if isinstance(r.eval.get("provenance"), dict)]
    if not have:
        return None
    positions = list(have[0].eval["provenance"].get("by_position") or {})
    headers = ["model / run", "sentences", *cats, "teacher | correct", "teacher | incorrect", "boosted | correct",
               "boosted | incorrect", *[f"teacher | {p}" for p in positions]]
    body = []
    for r in have:
        p = r.eval["provenance"]
        cells = [(esc(r.name), False), (esc(_int(p["overall"].get("sentences"))), True)]
        cells += [(esc(_pct(p["overall"].get(c))), True) for c in cats]
        cells += [(esc(_pct(p[o].get(c))), True) for c in ("teacher", "boosted") for o in ("correct", "incorrect")]
        cells += [(esc(_pct(p["by_position"][q].get("teacher"))), True) for q in positions]
        body.append(cells)
    return _table(headers, body)


def _difficulty_order(key: str):
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def difficulty_table(rows) -> str | None:
    by = {r.name: r.eval.get("by_difficulty") for r in rows}
    by = {name: d for name, d in by.items() if isinstance(d, dict) and d}
    if not by:
        return None
    # "None" is where examples without a difficulty go: no column for it.
    keys = sorted({str(k) for d in by.values() for k in d} - {"None"}, key=_difficulty_order)
    if not keys:
        return None
    body = []
    for name, d in by.items():
        d = {str(k): v for k, v in d.items()}
        body.append([(esc(name), False)] + [(esc(_pct(d.get(k))), True) for k in keys])
    return _table(["model / run", *[f"difficulty {k}" for k in keys]], body)


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
                     (esc(get(c, "task", "name")), False), (esc(_int(run.steps)), True),
                     (esc(_int(s.get("tokens"))), True), (esc(_float(s.get("train_time_s"))), True),
                     (esc("-" if stopped is None else ("yes" if stopped else "no")), False),
                     (esc(run.path), "path")])
    headers = ["run", "method", "student", "data source", "task", "steps", "tokens",
               "train time (s)", "stopped early", "directory"]
    return _table(headers, body)


def _img(uri: str | None, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="{uri}">' if uri else ""


def samples_section(rows) -> str | None:
    parts = []
    for r in rows:
        samples = r.eval.get("samples")
        samples = [s for s in samples if isinstance(s, dict)] if isinstance(samples, list) else []
        if not samples:
            continue
        parts.append(f"<h3>{esc(r.name)}</h3>")
        for i, s in enumerate(samples[:SAMPLES_PER_ROW], 1):
            correct = s.get("correct")
            mark = ('<span class="ok">&#10003; correct</span>' if correct is True else
                    '<span class="bad">&#10007; incorrect</span>' if correct is False else
                    "<span>correctness unknown</span>")
            text = "\n".join(f"{label}:\n{s.get(key, '-')}\n" for label, key in
                             (("prompt", "prompt"), ("completion", "completion"),
                              ("reference", "reference")))
            parts.append(f"<div>sample {i}: {mark}</div>\n<pre>{esc(text.rstrip())}</pre>")
    return "\n".join(parts) if parts else None


def _eval_caption(rows) -> str:
    pairs = {(r.eval.get("task"), r.eval.get("split")) for r in rows if r.eval.get("task")}
    if not pairs:
        return ""
    what = ", ".join(f"{t} ({s})" if s else str(t) for t, s in sorted(pairs, key=str))
    if _generators(rows):
        return (f'<p class="sub">Evaluated on: {esc(what)}. Points: sliced Wasserstein distance as a ratio to the '
                "noise floor (the same distance between draws of the exact distribution, averaged over 8), "
                "unbiased MMD^2, modes holding >= 20% of their "
                "share within 3 std. Images: Frechet distance on a classifier's penultimate features against the "
                "real test images. NFE: network evaluations per sample.</p>")
    if _classifiers(rows):
        return (f'<p class="sub">Evaluated on: {esc(what)}. Accuracy is top-1 at the last step; "at best val" is '
                "the test accuracy at the evaluation with the best validation accuracy (the test split chooses "
                "nothing). ECE: 15 equal-width confidence bins.</p>")
    return f'<p class="sub">Evaluated on: {esc(what)}. Accuracy is greedy pass@1.</p>'


def _classifiers(rows) -> bool:
    return any("ece" in r.eval for r in rows)


def render(rows, runs, title: str, inputs: list[str]) -> str:
    """The whole page. Sections with no data are left out rather than shown empty."""
    curves = [(run.name, run.train) for run in runs]
    loss = plots.loss_curves(curves)
    evals = plots.eval_curves([(run.name, run.evals) for run in runs])
    scatter = plots.accuracy_vs_tokens(
        [(r.name, r.eval.get("mean_tokens"), r.eval.get("accuracy")) for r in rows])

    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="sub">{len(rows)} model(s), {len(runs)} training run(s)</p>',
            "<h2>Comparison</h2>", _eval_caption(rows),
            *(generator_tables(rows) if _generators(rows) else
              [classifier_table(rows) if _classifiers(rows) else comparison_table(rows)])]
    if _generators(rows):
        grid = plots.generator_samples([(r.name, r.eval) for r in rows])
        if grid:
            body += ["<h3>Samples</h3>", _img(grid, "samples of each generator")]
        first = plots.generator_samples([(r.name, r.eval["first_step"]) for r in rows
                                         if isinstance(r.eval.get("first_step"), dict)])
        if first:
            body += ["<h3>First-step predictions (DT-visualisation)</h3>",
                     "<p>What each model predicts as its final sample after its first step, for the same noises "
                     "of one condition: a distilled student commits at once (far apart, close to real samples); "
                     "a diffusion model's first prediction is a blurred average.</p>",
                     _img(first, "first-step predictions of each generator")]
    reliability = plots.reliability_diagram([(r.name, r.eval.get("reliability")) for r in rows])
    if reliability:
        body += ["<h3>Calibration</h3>", _img(reliability, "reliability diagram: accuracy vs confidence")]
    difficulty = difficulty_table(rows)
    if difficulty:
        body += ["<h3>Accuracy by difficulty</h3>", difficulty]
    prov = provenance_table(rows)
    if prov:
        body += ["<h3>Where the answers' sentences come from (provenance tracing)</h3>",
                 '<p class="sub">Shares of sentences: teacher-originated (teacher much likelier than the student '
                 'before distillation), student-originated, shared, boosted (neither source, made likely by '
                 'distillation); overall, in correct and incorrect answers, and by position in the answer.</p>', prov]
    table = runs_table(runs)
    if table:
        body += ["<h2>Training runs</h2>", table]
    if loss or evals:
        body += ["<h2>Training curves</h2>", _img(loss, "training loss vs step"),
                 _img(evals, "evaluation accuracy vs step")]
    if scatter:
        body += ["<h2>Accuracy vs tokens</h2>", _img(scatter, "accuracy vs mean tokens per answer")]
    samples = samples_section(rows)
    if samples:
        body += ["<h2>Sample completions</h2>", samples]

    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    items = "".join(f"<li><code>{esc(d)}</code></li>" for d in inputs)
    body.append(f"<footer><p>Generated by retort at {esc(now)} from:</p><ul>{items}</ul></footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(b for b in body if b) + "\n</body>\n</html>\n")

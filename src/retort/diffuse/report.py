"""The diffusion track's report sections: one table of generators per kind of data (points:
SWD, MMD, modes; images: FD, label entropy), their samples and first-step predictions."""

from __future__ import annotations

from ..report import ReportParts, plots
from ..report.html import esc, evaluated_on, fmt_float, fmt_int, fmt_params, img, num, pct, table


def generator_table(rows) -> str:
    """Generators: NFE and sampling time beside the distribution metrics of their kind."""
    images = any(_images(r) for r in rows)
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
            vals = [fmt_float(e.get("fd"), 2), fmt_float(e.get("fd_floor"), 2), fmt_float(e.get("label_entropy"), 3),
                    pct(e.get("label_match")), fmt_float(e.get("within_class_diversity"), 2)]
        else:
            modes = f"{e['modes_covered']}/{e['modes']}" if num(e.get("modes")) else "-"
            vals = [fmt_float(e.get("swd_ratio"), 2), fmt_float(e.get("mmd2"), 5), modes, pct(e.get("recall")),
                    pct(e.get("precision"))]
        if dt:
            fs = e.get("first_step") if isinstance(e.get("first_step"), dict) else {}
            vals += [fmt_float(fs.get("spread"), 3), fmt_float(fs.get("to_data"), 3)]
        name = r.name if not num(e.get("nonfinite")) else f"{r.name} ({pct(e['nonfinite'])} of samples not finite)"
        body.append([(esc(name), False), (esc(fmt_params(r.params)), True), (esc(fmt_int(e.get("nfe"))), True),
                     *[(esc(v), True) for v in vals], (esc(fmt_float(e.get("seconds_per_1k"), 3)), True),
                     (esc(fmt_float(r.train_time)), True), (esc(fmt_int(r.steps)), True)])
    return table(headers, body)


# the image datasets (retort.diffuse.data; that module needs torch, which the report does not load)
IMAGE_DATA = ("digits", "mnist")


def _images(row) -> bool:
    """Whether a row is an image generator: by its metrics, else (not measured yet, or its samples not
    finite) by the data its eval or its run names."""
    e = row.eval
    if "fd" in e or "swd_ratio" in e:
        return "fd" in e
    task = (row.run.config.get("task") if row.run is not None else None) or {}
    return (e.get("task") or (task.get("name") if isinstance(task, dict) else None)) in IMAGE_DATA


def generator_tables(rows) -> list[str]:
    """One table per kind of data (points, images): their metrics differ. A row without metrics is
    in its kind's table too, its numbers "-"."""
    images = [r for r in rows if _images(r)]
    points = [r for r in rows if not _images(r)]
    return [generator_table(g) for g in (points, images) if g]


def _caption(rows) -> str:
    what = evaluated_on(rows)
    if not what:
        return ""
    return (f'<p class="sub">Evaluated on: {esc(what)}. Points: sliced Wasserstein distance as a ratio to the '
            "noise floor (the same distance between draws of the exact distribution, averaged over 8), "
            "unbiased MMD^2, modes holding >= 20% of their "
            "share within 3 std. Images: Frechet distance on a classifier's penultimate features against the "
            "real test images. NFE: network evaluations per sample.</p>")


def sections(rows, runs) -> ReportParts:
    parts = ReportParts(comparison=[_caption(rows), *generator_tables(rows)], title="Generators")
    grid = plots.generator_samples([(r.name, r.eval) for r in rows])
    if grid:
        parts.details += ["<h3>Samples</h3>", img(grid, "samples of each generator")]
    first = plots.generator_samples([(r.name, r.eval["first_step"]) for r in rows
                                     if isinstance(r.eval.get("first_step"), dict)])
    if first:
        parts.details += ["<h3>First-step predictions (DT-visualisation)</h3>",
                          "<p>What each model predicts as its final sample after its first step, for the same "
                          "noises of one condition: a distilled student commits at once (far apart, close to real "
                          "samples); a diffusion model's first prediction is a blurred average.</p>",
                          img(first, "first-step predictions of each generator")]
    return parts


def claims(result: dict) -> bool:
    return "nfe" in result

"""The classifier track's report sections: the comparison of classifiers (accuracy at the last
step and at the best validation accuracy, calibration, agreement with the teacher) and the
reliability diagram."""

from __future__ import annotations

from ..report import ReportParts, plots
from ..report.html import esc, evaluated_on, fmt_float, fmt_int, fmt_params, img, num, pct, table


def classifier_table(rows) -> str:
    """The comparison of classifiers: last-step test accuracy, the test accuracy at the evaluation
    with the best validation accuracy, calibration, and agreement with the run's teacher."""
    headers = ["model / run", "params", "test n", "accuracy (last)", "accuracy at best val (step)", "ECE", "NLL",
               "same top-1 as teacher", "KL(teacher || model)", "train time (s)", "steps"]
    private = any(num(r.eval.get("epsilon")) for r in rows)  # students trained under DP-SGD (privacy.*)
    headers += ["ε (DP)"] if private else []
    body = []
    for r in rows:
        e = r.eval
        best = pct(e.get("test_at_best_val"))
        if num(e.get("best_val_step")):
            best += f" ({int(e['best_val_step'])})"
        body.append([(esc(r.name), False), (esc(fmt_params(r.params)), True), (esc(fmt_int(e.get("n"))), True),
                     (esc(pct(e.get("accuracy"))), True), (esc(best), True), (esc(fmt_float(e.get("ece"), 4)), True),
                     (esc(fmt_float(e.get("nll"), 3)), True), (esc(pct(e.get("agree_top1"))), True),
                     (esc(fmt_float(e.get("kl_teacher"), 3)), True), (esc(fmt_float(r.train_time)), True),
                     (esc(fmt_int(r.steps)), True)] + ([(esc(fmt_float(r.eval.get("epsilon"), 2)), True)] if private else []))
    return table(headers, body)


def _caption(rows) -> str:
    what = evaluated_on(rows)
    if not what:
        return ""
    return (f'<p class="sub">Evaluated on: {esc(what)}. Accuracy is top-1 at the last step; "at best val" is '
            "the test accuracy at the evaluation with the best validation accuracy (the test split chooses "
            "nothing). ECE: 15 equal-width confidence bins.</p>")


def sections(rows, runs) -> ReportParts:
    parts = ReportParts(comparison=[_caption(rows), classifier_table(rows)], title="Classifiers")
    reliability = plots.reliability_diagram([(r.name, r.eval.get("reliability")) for r in rows])
    if reliability:
        parts.details += ["<h3>Calibration</h3>", img(reliability, "reliability diagram: accuracy vs confidence")]
    return parts


def claims(result: dict) -> bool:
    return "ece" in result

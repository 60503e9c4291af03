"""The language-model track's report sections: the comparison table (accuracy, pass@k / maj@k,
fidelity to a reference, tokens per answer), accuracy by difficulty, sentence provenance, accuracy
against tokens, and sample completions."""

from __future__ import annotations

import re

from ..report import ReportParts, plots
from ..report.html import esc, evaluated_on, fmt_float, fmt_int, fmt_params, img, pct, table

SAMPLES_PER_ROW = 3
KEYED_METRIC = re.compile(r"^(pass|maj)@(\d+)$")


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
    # answers with nothing the task's answer format could read (a format failure, not a wrong answer)
    no_answer = any("no_answer_rate" in r.eval for r in rows)
    headers += ["no answer"] if no_answer else []
    # greedy decoding speed where the evaluation measured it (its machine's: compare rows of one command)
    speed = any("tokens_per_s" in r.eval for r in rows)
    headers += ["mean tokens / answer", *(["tokens / s"] if speed else []), "train time (s)", "steps"]
    private = any("epsilon" in r.eval for r in rows)  # students trained under DP-SGD (privacy.*)
    headers += ["ε (DP)"] if private else []
    body = []
    for r in rows:
        e = r.eval
        cells = [(esc(r.name), False), (esc(fmt_params(r.params)), True),
                 (esc(fmt_int(e.get("n"))), True), (esc(pct(e.get("accuracy"))), True)]
        cells += [(esc(pct(e.get(k))), True) for k in keyed]
        cells += [(esc(pct(e.get("pass@1_sampled"))), True)] if sampled else []
        cells += [(esc(pct(e.get(k))), True) for k in fid]
        cells += [(esc(fmt_float(e.get("kl_ref_model"), 3)), True)] if kl else []
        cells += [(esc(pct(e.get("no_answer_rate"))), True)] if no_answer else []
        cells += [(esc(fmt_float(e.get("mean_tokens"))), True)]
        cells += [(esc(fmt_float(e.get("tokens_per_s"))), True)] if speed else []
        cells += [(esc(fmt_float(r.train_time)), True), (esc(fmt_int(r.steps)), True)]
        cells += [(esc(fmt_float(e.get("epsilon"), 2)), True)] if private else []
        body.append(cells)
    return table(headers, body)


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
        cells = [(esc(r.name), False), (esc(fmt_int(p["overall"].get("sentences"))), True)]
        cells += [(esc(pct(p["overall"].get(c))), True) for c in cats]
        cells += [(esc(pct(p[o].get(c))), True) for c in ("teacher", "boosted") for o in ("correct", "incorrect")]
        cells += [(esc(pct(p["by_position"][q].get("teacher"))), True) for q in positions]
        body.append(cells)
    return table(headers, body)


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
        body.append([(esc(name), False)] + [(esc(pct(d.get(k))), True) for k in keys])
    return table(["model / run", *[f"difficulty {k}" for k in keys]], body)


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


def _caption(rows) -> str:
    what = evaluated_on(rows)
    return f'<p class="sub">Evaluated on: {esc(what)}. Accuracy is greedy pass@1.</p>' if what else ""


def sections(rows, runs) -> ReportParts:
    parts = ReportParts(comparison=[_caption(rows), comparison_table(rows)], title="Language models")
    difficulty = difficulty_table(rows)
    if difficulty:
        parts.details += ["<h3>Accuracy by difficulty</h3>", difficulty]
    prov = provenance_table(rows)
    if prov:
        parts.details += ["<h3>Where the answers' sentences come from (provenance tracing)</h3>",
                          '<p class="sub">Shares of sentences: teacher-originated (teacher much likelier than the '
                          'student before distillation), student-originated, shared, boosted (neither source, made '
                          'likely by distillation); overall, in correct and incorrect answers, and by position in '
                          'the answer.</p>', prov]
    scatter = plots.accuracy_vs_tokens([(r.name, r.eval.get("mean_tokens"), r.eval.get("accuracy")) for r in rows])
    if scatter:
        parts.end += ["<h2>Accuracy vs tokens</h2>", img(scatter, "accuracy vs mean tokens per answer")]
    samples = samples_section(rows)
    if samples:
        parts.end += ["<h2>Sample completions</h2>", samples]
    return parts


def claims(result: dict) -> bool:
    """An eval result of a language model: anything with an accuracy that no other track claims
    (the report asks the default track last)."""
    return "accuracy" in result

"""Classifier metrics: top-1 accuracy, expected calibration error, NLL, agreement with a teacher.

`predict(model, x)` -> logits in batches (eval mode, no grad); `metrics(logits, y, teacher_logits)`
-> the numbers a table shows; `reliability(logits, y)` -> the bins of a reliability diagram.
ECE is the standard equal-width-bin estimate (Guo et al. 2017, "On Calibration of Modern Neural
Networks", eq. 3): sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over 15 bins of the top-1 confidence.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int = 1024, device=None) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    out = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def reliability(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> list[dict]:
    """Per equal-width confidence bin: its range, count, mean confidence and accuracy."""
    p = torch.softmax(logits.float(), -1)
    conf, pred = p.max(-1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    rows = []
    for i in range(bins):
        lo, hi = float(edges[i]), float(edges[i + 1])
        m = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        n = int(m.sum())
        rows.append({"lo": lo, "hi": hi, "n": n, "confidence": float(conf[m].mean()) if n else None,
                     "accuracy": float(correct[m].mean()) if n else None})
    return rows


def ece(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    n = len(y)
    return sum(r["n"] / n * abs(r["accuracy"] - r["confidence"]) for r in reliability(logits, y, bins) if r["n"])


def metrics(logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None = None,
            bins: int = 15) -> dict:
    logits = logits.float()
    out = {"accuracy": float((logits.argmax(-1) == y).float().mean()), "n": len(y),
           "ece": ece(logits, y, bins),
           "nll": float(torch.nn.functional.cross_entropy(logits, y))}
    if teacher_logits is not None:
        t = teacher_logits.float()
        out["agree_top1"] = float((logits.argmax(-1) == t.argmax(-1)).float().mean())
        lt, ls = torch.log_softmax(t, -1), torch.log_softmax(logits, -1)
        out["kl_teacher"] = float((lt.exp() * (lt - ls)).sum(-1).mean())  # KL(teacher || student), T=1
    return out

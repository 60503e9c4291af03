"""Membership inference: does a model's loss tell its training rows (members) from held-out rows
of the same distribution (non-members)?

- `loss` attack (Yeom et al. 2018, "Privacy Risk in Machine Learning", arXiv:1709.01604): the
  lower a row's loss, the likelier it is a member; score = -loss.
- `reference` attack (calibrated by a reference model trained on other data; Carlini et al. 2022,
  "Membership Inference Attacks From First Principles", arXiv:2112.03570, §IV's offline LiRA in
  its simplest form, and Watson et al. 2022's difficulty calibration): score = loss_reference -
  loss_target, so a row that is hard for every model is not taken for a non-member.

Reported per attack: ROC AUC (scikit-learn; 0.5 = no better than chance), the TPR at FPR 0.1% and
1% (what privacy auditors ask for: how many members are exposed with almost no false alarms; None
when there are too few non-members to measure that FPR, i.e. fewer than 1/FPR), and the best
balanced accuracy advantage max(TPR - FPR)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError

LOW_FPR = (0.001, 0.01)


def _finite(values, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if not len(x):
        raise DataError(f"membership inference: no {what} rows (it needs members and held-out non-members)")
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise DataError(f"membership inference: {bad} of the {what} scores are not finite (NaN or inf)")
    return x


def attack_metrics(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> dict:
    """ROC metrics of scores where higher means 'member'."""
    from sklearn.metrics import roc_auc_score, roc_curve

    m, n = _finite(member_scores, "member"), _finite(nonmember_scores, "non-member")
    labels = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    scores = np.concatenate([m, n])
    fpr, tpr, _ = roc_curve(labels, scores)
    out = {"auc": float(roc_auc_score(labels, scores)), "advantage": float((tpr - fpr).max()),
           "members": len(m), "nonmembers": len(n)}
    for target in LOW_FPR:
        key = f"tpr@fpr={target:g}"
        # an FPR below one false alarm in the non-members cannot be measured: no number rather than a guess
        out[key] = float(tpr[fpr <= target].max()) if len(n) * target >= 1 else None
    return out


def loss_attack(member_losses, nonmember_losses) -> dict:
    """The loss-threshold attack; also the mean loss of each side."""
    m, n = _finite(member_losses, "member"), _finite(nonmember_losses, "non-member")
    return {**attack_metrics(-m, -n), "member_loss": float(m.mean()), "nonmember_loss": float(n.mean())}


def reference_attack(member_losses, nonmember_losses, ref_member_losses, ref_nonmember_losses) -> dict:
    """The reference-calibrated attack: score = reference loss - target loss, row by row."""
    m, n = _finite(member_losses, "member"), _finite(nonmember_losses, "non-member")
    rm, rn = _finite(ref_member_losses, "reference member"), _finite(ref_nonmember_losses, "reference non-member")
    if rm.shape != m.shape or rn.shape != n.shape:
        raise ValueError("reference losses must be given for the same rows as the target's")
    return attack_metrics(rm - m, rn - n)

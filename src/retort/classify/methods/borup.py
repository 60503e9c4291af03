"""`borup`: self-distillation over generations with the ground truth mixed into every step's target.

"Even your Teacher Needs Guidance: Ground-Truth Targets Dampen Regularization Imposed by
Self-Distillation" (Borup & Andersen, NeurIPS 2021, arXiv 2102.13088). Step t fits

    min_f  alpha ||y - f(X)||^2 + (1 - alpha) ||f_{t-1}(X) - f(X)||^2 + reg(f)

i.e. a fit to the mixed target alpha y + (1 - alpha) f_{t-1}(X). In kernel ridge regression every
step and the infinite-step limit have closed forms (section 3), which this module computes and the
tests check against the authors' sinusoid numbers (`toy_example.ipynb`): the MSE per step with
alpha=0 is 0.16477, 0.15076, 0.14915, 0.15561, ... (limit 0.49505, the zero function) and with
alpha=0.35 it improves every step to a limit of 0.14959 (KRR with lambda / alpha).

The neural method is the authors' `self_distiller.py` loss: alpha MSE(softmax f, onehot y) +
(1 - alpha) MSE(softmax f, softmax f_teacher), each a mean over classes as torch's MSELoss takes it;
the teacher is the previous generation (`retort generations` runs the chain, each generation's
student re-initialised). Their 1e-4 * sum ||theta|| (un-squared) regulariser is replaced by the
run's weight decay. `alpha_hat` is the two-run estimate of the best alpha (the prediction is
affine in alpha for KRR, nearly so for wide networks): train at alpha=0 and alpha=1 and project
the validation labels on the line between the two predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...config import param
from ...contract import LossOut
from ...losses.classify import ground_truth_mse
from .base import ClassifyMethod


# ------------------------------------------------------------------ kernel ridge regression, closed forms


def rbf_kernel(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-gamma * d)


def krr_self_distillation(X, y, x_eval, *, alpha: float, steps: int, gamma: float, lam: float):
    """Predictions at `x_eval` of steps 1..steps, and of the limit (None when alpha = 0: the zero
    function). Step 1 is plain KRR on y (y-hat^(0) := y, so alpha does not matter there)."""
    K = rbf_kernel(X, X, gamma)
    inv = np.linalg.inv(K + lam * np.eye(len(y)))
    A, Ax = K @ inv, rbf_kernel(x_eval, X, gamma) @ inv
    preds, fitted = [], y
    for t in range(steps):
        target = y if t == 0 else alpha * y + (1 - alpha) * fitted
        preds.append(Ax @ target)
        fitted = A @ target
    limit = None
    if alpha > 0:  # KRR with lambda / alpha: alpha k(x, X) (alpha K + lambda I)^-1 y
        limit = alpha * rbf_kernel(x_eval, X, gamma) @ np.linalg.solve(alpha * K + lam * np.eye(len(y)), y)
    return preds, limit


def eigen_recursion(K, lam: float, alpha: float, steps: int):
    """The diagonal operators B_1..B_steps of y-hat^(t) = V B_t V^T y (B_1 = D (D + lambda)^-1,
    B_t = A_D ((1 - alpha) B_{t-1} + alpha I)) and the limit alpha D (alpha D + lambda I)^-1."""
    d = np.linalg.eigvalsh(K)
    a = d / (d + lam)
    bs, b = [a.copy()], a.copy()
    for _ in range(steps - 1):
        b = a * ((1 - alpha) * b + alpha)
        bs.append(b.copy())
    return bs, alpha * d / (alpha * d + lam)


def optimal_alpha(A_z: np.ndarray, y: np.ndarray, prev: np.ndarray, z: np.ndarray) -> float:
    """The alpha minimising ||z - f_t(alpha)||^2 at step t, where f_t(alpha) = A_z (alpha y + (1 - alpha)
    prev) is affine in alpha (`prev`: the previous step's fit on the training points, `A_z`: the
    smoother to the evaluation points of reference z): clip(<d, z - b> / ||d||^2, 0, 1) with
    d = A_z (y - prev), b = A_z prev."""
    d, b = A_z @ (y - prev), A_z @ prev
    nd = float(d @ d)
    return 0.0 if nd == 0 else float(np.clip(d @ (z - b) / nd, 0.0, 1.0))


def alpha_hat(f0: torch.Tensor, f1: torch.Tensor, target: torch.Tensor) -> float:
    """Two-run estimate for a network: predictions `f0` (trained at alpha=0) and `f1` (alpha=1) on a
    validation set, `target` its one-hot labels: clip(<f1 - f0, target - f0> / ||f1 - f0||^2, 0, 1)."""
    d = (f1 - f0).double().flatten()
    nd = float(d @ d)
    return 0.0 if nd == 0 else float(np.clip(float(d @ (target - f0).double().flatten()) / nd, 0.0, 1.0))


# ------------------------------------------------------------------ the neural method


class Borup(ClassifyMethod):
    name = "borup"
    paper = ("Even your Teacher Needs Guidance: Ground-Truth Targets Dampen Regularization Imposed by "
             "Self-Distillation (Borup & Andersen, NeurIPS 2021, arXiv 2102.13088)")
    equation = ("L = alpha MSE(softmax f, onehot y) + (1 - alpha) MSE(softmax f, softmax f_{t-1})   (the authors' "
                "self_distiller.py; teacher = the previous generation: `retort generations`)")

    @dataclass
    class Config:
        alpha: float = param(0.6, "weight of the ground truth in each step's target (the authors' CIFAR-10 run: "
                             "0.6; 0 = pure self-distillation, which collapses over generations)", lo=0.0, hi=1.0)

    def loss(self, model, batch) -> LossOut:
        logits = model(batch["x"]).float()
        n = len(batch["y"])
        loss = ground_truth_mse(logits, batch["teacher_logits"], batch["y"], alpha=self.cfg.alpha).sum()
        return LossOut(loss, n, {"mse": float(loss.detach()) / n})

"""Evaluation: accuracy (pass@1, pass@k, maj@k), tokens per answer, accuracy by difficulty."""

from .metrics import majority, pass_at_k


def __getattr__(name):
    # the model-running half loads torch: imported when asked for, so `metrics` alone stays light
    if name in ("evaluate", "results_table"):
        from . import run

        return getattr(run, name)
    raise AttributeError(name)


__all__ = ["evaluate", "majority", "pass_at_k", "results_table"]

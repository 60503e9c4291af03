"""Evaluation: accuracy (pass@1, pass@k, maj@k), tokens per answer, accuracy by difficulty."""

from .metrics import majority, pass_at_k


def __getattr__(name):
    # the model-running half loads torch: imported when asked for, so `metrics` alone stays light
    if name in ("evaluate", "fidelity", "load_reference", "reference", "results_table",
                "teacher_answers"):
        from . import run

        return getattr(run, name)
    raise AttributeError(name)


__all__ = ["evaluate", "fidelity", "load_reference", "majority", "pass_at_k", "reference", "results_table",
           "teacher_answers"]

"""Evaluation: accuracy (pass@1, pass@k, maj@k), tokens per answer, accuracy by difficulty."""

from .metrics import majority, pass_at_k
from .run import evaluate, results_table

__all__ = ["evaluate", "majority", "pass_at_k", "results_table"]

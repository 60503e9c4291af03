"""Losses: pure per-token divergences over logits (or sparse top-k teacher log-probs), and the one
place where masking and normalisation happen (`reduce`). Depends on torch alone."""

from .divergences import (DIVERGENCES, forward_kl, generalized_jsd, reverse_kl, skew_forward_kl, skew_reverse_kl,
                          sparse_teacher_logprobs, tvd)
from .reduce import masked_sum, normalised

__all__ = ["DIVERGENCES", "forward_kl", "generalized_jsd", "masked_sum", "normalised", "reverse_kl",
           "skew_forward_kl", "skew_reverse_kl", "sparse_teacher_logprobs", "tvd"]

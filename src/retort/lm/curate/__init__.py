"""Data selection over trace sets: statistics and filters (`retort curate`)."""

from .select import FILTERS, filter_traces
from .stats import trace_stats

__all__ = ["FILTERS", "filter_traces", "trace_stats"]

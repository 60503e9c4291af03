"""Data selection over trace sets: statistics and filters (`retort curate`)."""

from .stats import trace_stats


def __getattr__(name):
    # the filters (DAS scores with a model) load torch: imported when asked for
    if name in ("FILTERS", "filter_traces"):
        from . import select

        return getattr(select, name)
    raise AttributeError(name)


__all__ = ["FILTERS", "filter_traces", "trace_stats"]

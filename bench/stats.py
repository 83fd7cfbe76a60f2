"""The arithmetic of the report: percentiles of samples and medians of runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least ``p`` % of the samples at or below it."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float | None]) -> float | None:
    """The median of the runs that measured something (None where none did)."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None

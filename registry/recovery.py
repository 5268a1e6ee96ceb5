"""The one quality number the registry ranks by: the fraction of the compression gap a prompt wins back."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def gap_recovered(metrics: Mapping[str, Any]) -> float | None:
    """(compressed - prompted) / (compressed - full); None when a value is missing or there is no gap."""
    try:
        full, compressed, prompted = (float(metrics[k]) for k in ("ppl_full", "ppl_compressed", "ppl_prompted"))
    except (KeyError, TypeError, ValueError):
        return None
    gap = compressed - full
    if not all(math.isfinite(x) for x in (full, compressed, prompted)) or gap <= 0:
        return None
    return (compressed - prompted) / gap

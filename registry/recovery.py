"""How much of what compression lost a prompt wins back, and when a compressed model is beyond recovering.

Gap recovered is quoted in two spaces: perplexity (the paper's convention, which the registry ranks by) and
log-perplexity, ``(log c - log p) / (log c - log f)``, which does not let a huge compressed perplexity make a small
improvement look large.

A compressed model whose perplexity exceeds ``COLLAPSE_RATIO`` times the full model's is *collapsed*: it no longer
models the text (SmolLM2-135M at GPTQ 2-bit, README demo table: 1.6 million against 25.6), so any fraction of that gap
says nothing about the prompt. The threshold sits above what working compressions cost there (GPTQ 4-bit 1.4x,
SparseGPT 50% 2.2x, GPTQ 3-bit 4.5x) and far below what the broken one does (62,000x).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

COLLAPSE_RATIO = 10.0


def gap_recovered(metrics: Mapping[str, Any]) -> float | None:
    """(compressed - prompted) / (compressed - full); None when a value is missing or there is no gap."""
    values = _values(metrics)
    if values is None:
        return None
    full, compressed, prompted = values
    return (compressed - prompted) / (compressed - full)


def log_gap_recovered(metrics: Mapping[str, Any]) -> float | None:
    """(log compressed - log prompted) / (log compressed - log full); None like ``gap_recovered``."""
    values = _values(metrics)
    if values is None:
        return None
    full, compressed, prompted = (math.log(v) for v in values)
    return (compressed - prompted) / (compressed - full)


def is_perplexity(value: object) -> bool:
    """A number a perplexity can be: finite and at least 1 (booleans are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 1


def collapsed(ppl_full: float, ppl_compressed: float) -> bool:
    """Whether compression broke the model rather than degraded it (see the module docstring)."""
    return ppl_compressed > COLLAPSE_RATIO * ppl_full


def _values(metrics: Mapping[str, Any]) -> tuple[float, float, float] | None:
    try:
        values = tuple(float(metrics[k]) for k in ("ppl_full", "ppl_compressed", "ppl_prompted"))
    except (KeyError, TypeError, ValueError):
        return None
    full, compressed, _ = values
    if not all(math.isfinite(x) and x > 0 for x in values) or compressed <= full:
        return None
    return values  # type: ignore[return-value]

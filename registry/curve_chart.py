"""Select-split perplexity against cumulative optimizer steps, one line per prompt name: what compute has bought.

Each line is the lineage curve of a name's newest version (``registry.lineage``: every select check since the first
run of the line, continued or warm-started runs included), so a continued prompt extends the line of the run it
came from. Select perplexities are the training run's own checks (the split that picks steps), not test figures.
The PNG carries the points it draws as JSON in its ``Description`` text chunk, as the report chart does.
"""

from __future__ import annotations

import io
import json

from .errors import MissingExtra, NotFound
from .records import PromptRecord


def curves(records: list[PromptRecord]) -> dict[str, list[tuple[int, float]]]:
    """``{NAME:VERSION: [(step, select ppl), ...]}`` for the newest version of each name that records a curve."""
    newest: dict[str, PromptRecord] = {}
    for record in records:
        if record.lineage.select_curve and record.version > getattr(newest.get(record.name), "version", 0):
            newest[record.name] = record
    return {r.ref: list(r.lineage.select_curve) for r in sorted(newest.values(), key=lambda r: r.name)}


def curve_png(model: str, records: list[PromptRecord]) -> bytes:
    lines = curves(records)
    if not lines:
        raise NotFound(f"no prompt of {model!r} records a training curve (prompts trained before lineage did not)")
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise MissingExtra("charts need matplotlib: pip install 'ctpreg[train]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chart, axis = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for ref, points in lines.items():
        axis.plot([s for s, _ in points], [p for _, p in points], marker=".", label=ref)
    axis.set_xlabel("cumulative optimizer steps (the whole lineage)")
    axis.set_ylabel("select-split perplexity")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    axis.set_title(f"{model}: select perplexity as training compounds", fontsize=10)
    chart.tight_layout()
    buffer = io.BytesIO()
    chart.savefig(buffer, format="png", metadata={"Description": json.dumps(lines, sort_keys=True)})
    plt.close(chart)
    return buffer.getvalue()

"""The report as a PNG: one row of panels per set of windows, quantization and pruning apart, the full model as the
reference line, collapsed targets marked at the top edge instead of setting the scale, and the table under it.

matplotlib is imported only here and only when drawing (it comes with the ``train`` extra). The PNG carries the
points it draws as JSON in its ``Description`` text chunk, so what a chart shows can be checked by a program.
"""

from __future__ import annotations

import io
import json
import math
import textwrap
from typing import Any

from .errors import MissingExtra
from .report import FROM_ARTIFACT, PRUNED, QUANTIZED, TABLE_HEADER, ReportPoint, by_windows, table_rows

_AXIS_LABEL = {QUANTIZED: "bits per weight (quantization)", PRUNED: "fraction of weights pruned"}


def png_bytes(model: str, points: list[ReportPoint]) -> bytes:
    drawn = figure(model, points)  # first: it says which extra to install when matplotlib is missing
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    data = json.dumps([p.to_dict() for p in points], sort_keys=True)
    drawn.savefig(buffer, format="png", metadata={"Description": data})
    plt.close(drawn)
    return buffer.getvalue()


def figure(model: str, points: list[ReportPoint]) -> Any:
    """The chart as a matplotlib Figure (the caller closes it)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise MissingExtra("charts need matplotlib: pip install 'ctpreg[train]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = matplotlib.colormaps["tab10"]
    colors = {series: palette(i % 10) for i, series in enumerate(dict.fromkeys(p.series for p in points))}
    groups = list(by_windows(points).values())
    panels = [panel for panel in (QUANTIZED, PRUNED) if any(p.panel == panel for p in points)]
    table_height = 0.32 * (len(points) + 1)
    chart = plt.figure(figsize=(6.2 * len(panels), 4.2 * len(groups) + table_height + 0.6), dpi=110)
    grid = chart.add_gridspec(len(groups) + 1, len(panels), height_ratios=[4.2] * len(groups) + [table_height])
    for row, group in enumerate(groups):
        limits = _y_range(group)  # one scale per row: panels of the same windows compare at a glance
        for column, panel in enumerate(panels):
            axis = chart.add_subplot(grid[row, column])
            _panel(axis, panel, [p for p in group if p.panel == panel], colors, limits)
    _gap_table(chart.add_subplot(grid[len(groups), :]), points)
    chart.suptitle(f"{model}: perplexity without and with the served prompt (scored tokens only)", fontsize=11)
    chart.tight_layout()
    return chart


def _y_range(points: list[ReportPoint]) -> tuple[float, float]:
    """The range where the differences are: every figure of the windows except collapsed targets'."""
    values = [v for p in points if not p.collapsed for v in (p.ppl_compressed, p.ppl_prompted)]
    values += [p.ppl_full for p in points if p.ppl_full is not None]
    values = [v for v in values if math.isfinite(v)]
    if not values:  # every target collapsed: show them anyway
        values = [v for p in points for v in (p.ppl_compressed, p.ppl_prompted) if math.isfinite(v)] or [1.0]
    low, high = min(values), max(values)
    pad = max((high - low) * 0.12, high * 0.02)
    return max(low - pad, 0.0), high + pad


def _panel(axis: Any, panel: str, points: list[ReportPoint], colors: dict[str, Any],
           limits: tuple[float, float]) -> None:
    if not points:
        axis.set_axis_off()
        return
    windows = points[0].eval_windows
    axis.set_title("\n".join(textwrap.wrap(f"{panel} · {windows}", 70)), fontsize=8)
    axis.set_xlabel(_AXIS_LABEL[panel])
    axis.set_ylabel("perplexity")
    axis.grid(True, alpha=0.3)
    full = next((p.ppl_full for p in points if p.ppl_full is not None), None)
    kept = [p for p in points if not p.collapsed]
    axis.set_ylim(*limits)
    top = limits[1]
    if full is not None:
        axis.axhline(full, color="black", linestyle=":", linewidth=1.2, label=f"uncompressed ({full:.2f})")
    for series in dict.fromkeys(p.series for p in points):  # a line joins the levels of one method, never two
        members = sorted((p for p in kept if p.series == series), key=lambda p: p.x)
        color = colors[series]
        if members:
            xs = [p.x for p in members]
            alone = len(members) == 1  # a single level (bitsandbytes formats): labelled markers, no line
            axis.plot(xs, [p.ppl_compressed for p in members], "o" if alone else "o--", color=color,
                      label=f"{series}: compressed")
            served = [p for p in members if p.served]
            if served:
                axis.plot([p.x for p in served], [p.ppl_prompted for p in served], "s" if len(served) == 1 else "s-",
                          color=color, label=f"{series}: + served prompt")
            refused = [p for p in members if not p.served]
            if refused:  # measured, but no prompt helped enough to be served: hollow, apart from the line
                axis.plot([p.x for p in refused], [p.ppl_prompted for p in refused], "s", color=color,
                          markerfacecolor="none", label=f"{series}: best prompt, not served")
            for p in members:
                tag = p.target + (" (trained)" if p.source == FROM_ARTIFACT else "")
                axis.annotate(tag, (p.x, p.ppl_compressed), textcoords="offset points", xytext=(4, 4), fontsize=6)
        for p in (q for q in points if q.series == series and q.collapsed):
            axis.plot([p.x], [top], "^", color=color, clip_on=False, markersize=8)
            axis.annotate(f"{p.target} collapsed (ppl {p.ppl_compressed:.3g})", (p.x, top), textcoords="offset points",
                          xytext=(4, -10), fontsize=6, color="red")
    if panel == QUANTIZED:
        axis.set_xticks(sorted({p.x for p in points}))
        axis.set_xlim(min(p.x for p in points) - 0.5, max(p.x for p in points) + 0.5)
    else:
        axis.set_xlim(0.0, 1.0)
        axis.xaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    axis.legend(fontsize=6, loc="best")


def _gap_table(axis: Any, points: list[ReportPoint]) -> None:
    """``report.table_rows`` without the explanation column (the HTML and markdown formats carry it)."""
    axis.set_axis_off()
    rows = [[p.eval_windows, *row[:-1]] for p, row in zip(points, table_rows(points))]
    table = axis.table(cellText=rows, colLabels=["windows", *TABLE_HEADER[:-1]], loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(len(TABLE_HEADER))))

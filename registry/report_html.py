"""The report as one self-contained HTML file: the chart embedded, the table per set of windows, the provenance of
every figure and the versions of the software installed where the report was made. Every value that came from the
registry is escaped: metadata is user input."""

from __future__ import annotations

import base64
import html
from datetime import UTC, datetime
from importlib import metadata

from .recovery import COLLAPSE_RATIO
from .report import FROM_ARTIFACT, TABLE_HEADER, ReportPoint, by_windows, table_rows

_PACKAGES = (
    "ctpreg", "torch", "transformers", "gptqmodel", "llmcompressor", "bitsandbytes", "matplotlib", "sqlalchemy",
)
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
.muted { color: #666; font-size: 0.85rem; }
"""


def installed_versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def page(model: str, points: list[ReportPoint], png: bytes, *, now: datetime | None = None) -> str:
    e = html.escape
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(model)}: recovery report</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(model)}: what a prompt wins back on each compressed target</h1>",
        f'<p class="muted">Made {e(stamp)} by ctpreg report. Perplexity over scored tokens only (prompt positions '
        "never count). Gap recovered = (compressed - prompted) / (compressed - full), in perplexity and in "
        f"log-perplexity; a target beyond {COLLAPSE_RATIO:g}x the full model's perplexity is collapsed and no gap is "
        "quoted. Figures on different windows are never compared.</p>",
        f'<img alt="perplexity of {e(model)} per target, without and with the served prompt" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">',
    ]
    for group in by_windows(points).values():
        parts.append(f"<h2>Measured on {e(group[0].eval_windows)}</h2>")
        parts.append(f'<p class="muted">windows key {e(group[0].eval_key)}</p>')
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in [*TABLE_HEADER, "measured on"]) + "</tr>")
        for point, row in zip(group, table_rows(group)):
            cells = [f"<td>{e(row[0])}</td>", *(f'<td class="num">{e(c)}</td>' for c in row[1:6]),
                     *(f"<td>{e(c)}</td>" for c in row[6:]), f"<td>{e(_provenance(point))}</td>"]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    versions = ", ".join(f"{e(k)} {e(v)}" for k, v in installed_versions().items())
    parts.append(f'<p class="muted">Installed where this report was made: {versions}.</p></body></html>')
    return "\n".join(parts) + "\n"


def _provenance(point: ReportPoint) -> str:
    source = "the prompt's artifact" if point.source == FROM_ARTIFACT else f"{point.measurements} prompt(s) validated"
    return f"{point.target_key}; {source}"

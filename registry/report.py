"""What the registry knows about one model's recovery: per target, full / compressed / prompted perplexity.

Torch- and matplotlib-free (``registry.report_chart`` draws; ``registry.report_html`` writes the page). Figures come
from two places and are only put side by side when they were measured on the same windows (``eval_key``):

* evidence: a validator measured a prompt on a compressed target; per (target, target identity, windows) the point
  is the latest measurement of every prompt and the prompted value is the best of them (what the matcher serves);
* artifacts: a prompt's own training targets, from its recorded metrics (its test split; artifacts made before the
  split into train/select/test were measured on windows that also chose their best step, which the report says).

The uncompressed reference is the full model measured on those windows (recorded with evidence or in the artifact).
A collapsed target (``registry.recovery.collapsed``) is flagged, and its gap recovered is not quoted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .compression import QUANTIZATION, CompressionSpec, parse_compression
from .identity import EvalData
from .matcher import Target, rank
from .records import Evidence, PromptRecord
from .recovery import COLLAPSE_RATIO, collapsed, gap_recovered, log_gap_recovered

QUANTIZED, PRUNED = "quantization", "pruning"
FROM_EVIDENCE, FROM_ARTIFACT = "evidence", "artifact"


@dataclass(frozen=True)
class ReportPoint:
    """One target on one set of windows. ``series`` joins points of one method only; ``x`` is bits per weight
    (quantization panel) or the pruned fraction (pruning panel)."""

    target: str
    panel: str
    series: str
    x: float
    eval_key: str
    eval_windows: str
    target_key: str
    ppl_full: float | None
    ppl_compressed: float
    ppl_prompted: float
    prompt: str
    served: bool
    source: str
    explanation: str
    measurements: int

    @property
    def collapsed(self) -> bool:
        """Beyond the collapse ratio, or not even a finite perplexity."""
        if not math.isfinite(self.ppl_compressed):
            return True
        return self.ppl_full is not None and collapsed(self.ppl_full, self.ppl_compressed)

    @property
    def gap_recovered(self) -> float | None:
        return None if self.collapsed else gap_recovered(self._metrics)

    @property
    def log_gap_recovered(self) -> float | None:
        return None if self.collapsed else log_gap_recovered(self._metrics)

    @property
    def _metrics(self) -> dict[str, float | None]:
        return {"ppl_full": self.ppl_full, "ppl_compressed": self.ppl_compressed, "ppl_prompted": self.ppl_prompted}

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "collapsed": self.collapsed, "gap_recovered": self.gap_recovered,
                "log_gap_recovered": self.log_gap_recovered}


def placement(spec: CompressionSpec) -> tuple[str, str, float] | None:
    """(panel, series, x) of a compression; None for the uncompressed model, which is the reference line."""
    if spec.method == "none":
        return None
    if spec.sparsity is not None:
        pattern = f" {spec.prune_n}:{spec.prune_m}" if spec.prune_n else ""
        joint = f" + {spec.method} w{spec.bits}" if spec.family == QUANTIZATION else ""
        return PRUNED, f"{spec.prune_method}{pattern}{joint}", spec.sparsity
    series = f"{spec.method} g{spec.group_size}" if spec.group_size else spec.method
    return QUANTIZED, series, float(spec.bits or 0)


def summarize(model: str, evidence: Iterable[Evidence], prompts: Iterable[PromptRecord] = ()) -> list[ReportPoint]:
    """The report's points, sorted by windows, panel, series and level."""
    records = {p.ref: p for p in prompts}
    latest: dict[tuple[str, str, str, str], Evidence] = {}
    for item in evidence:  # oldest first, so later measurements of the same prompt win
        m = item.measurement
        latest[(item.target_compression, m.target_key, m.eval_key, item.prompt_ref)] = item
    groups: dict[tuple[str, str, str], list[Evidence]] = {}
    for (target, target_key, eval_key, _), item in latest.items():
        groups.setdefault((target, target_key, eval_key), []).append(item)
    full = _full_by_windows(latest.values(), records.values())
    points = [point for items in groups.values() if (point := _from_evidence(model, items, records, full))]
    measured = {(p.target, p.eval_key) for p in points}  # a validator's figure wins over the artifact's
    points += [p for p in _trained_targets(model, records.values()) if (p.target, p.eval_key) not in measured]
    panels = {QUANTIZED: 0, PRUNED: 1}
    return sorted(points, key=lambda p: (p.eval_key, panels[p.panel], p.series, p.x, p.target, p.target_key))


def _full_by_windows(evidence: Iterable[Evidence], records: Iterable[PromptRecord]) -> dict[str, float]:
    """The uncompressed model's perplexity per windows: recorded by a validator, in an artifact, or measured as the
    ``none`` target (its unprompted figure is the full model)."""
    full: dict[str, float] = {}
    for record in records:
        windows = _artifact_windows(record)
        if windows is not None and record.metrics.get("ppl_full") is not None:
            full[windows.key] = float(record.metrics["ppl_full"])
    for item in evidence:
        m = item.measurement
        if item.target_compression == "none":
            full[m.eval_key] = m.ppl_without
        elif m.ppl_full is not None:
            full[m.eval_key] = m.ppl_full
    return full


def _from_evidence(
    model: str, items: list[Evidence], records: dict[str, PromptRecord], full: dict[str, float]
) -> ReportPoint | None:
    best = min(items, key=lambda e: e.measurement.ppl_with)
    m, spec = best.measurement, parse_compression(best.target_compression)
    placed = placement(spec)
    if placed is None:
        return None
    panel, series, x = placed
    record = records.get(best.prompt_ref)
    if record is not None:  # the matcher's own words for this placement
        target = Target.for_spec(model, spec, identity=m.target_key)
        explanation = rank(target, [record], [best])[0].explanation
    else:
        explanation = f"measured {best.prompt_ref} on this target"
    if not best.accepted:
        explanation = f"none served: no prompt helps enough ({explanation})"
    return ReportPoint(
        target=spec.canonical, panel=panel, series=series, x=x, eval_key=m.eval_key, eval_windows=m.describe_data(),
        target_key=m.target_key, ppl_full=full.get(m.eval_key), ppl_compressed=m.ppl_without, ppl_prompted=m.ppl_with,
        prompt=best.prompt_ref, served=best.accepted, source=FROM_EVIDENCE, explanation=explanation,
        measurements=len(items),
    )


def _artifact_windows(record: PromptRecord) -> EvalData | None:
    data = record.metrics.get("eval_data")
    if not isinstance(data, dict):
        return None
    try:
        windows = EvalData.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return None
    return windows if all(isinstance(v, str | int | None) for v in vars(windows).values()) else None


def _artifact_caveat(windows: EvalData) -> str:
    if windows.split == "test":
        return "its test split, which chose nothing"
    return f"{windows.split} windows, which also chose its best step"


def _trained_targets(model: str, records: Iterable[PromptRecord]) -> list[ReportPoint]:
    """Each training target's figures from the artifacts: per (compression, windows), the prompt the matcher ranks
    first among those trained there (the exact match with the best recorded recovery)."""
    groups: dict[tuple[str, EvalData], list[PromptRecord]] = {}
    placed: dict[str, tuple[str, str, float]] = {}
    for record in records:
        windows = _artifact_windows(record)
        for trained in record.trained_on:
            metrics, where = record.figures_on(trained.compression), placement(trained.spec)
            numbers = all(isinstance(metrics.get(k), int | float) for k in ("ppl_compressed", "ppl_prompted"))
            if not record.deprecated and windows is not None and numbers and where is not None:
                groups.setdefault((trained.compression, windows), []).append(record)
                placed[trained.compression] = where
    points = []
    for (compression, windows), group in groups.items():
        spec = parse_compression(compression)
        panel, series, x = placed[compression]
        best = rank(Target.for_spec(model, spec), group)[0]
        metrics = best.prompt.figures_on(compression)
        full = metrics.get("ppl_full")
        points.append(ReportPoint(
            target=spec.canonical, panel=panel, series=series, x=x, eval_key=windows.key,
            eval_windows=windows.describe(), target_key="trained here",
            ppl_full=float(full) if isinstance(full, int | float) else None,
            ppl_compressed=float(metrics["ppl_compressed"]), ppl_prompted=float(metrics["ppl_prompted"]),
            prompt=best.prompt.ref, served=True, source=FROM_ARTIFACT,
            explanation=f"{best.explanation}; figures from the artifact ({_artifact_caveat(windows)})",
            measurements=len(group),
        ))
    return points


def _percent(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "n/a"


class HasGaps(Protocol):
    collapsed: bool
    gap_recovered: float | None
    log_gap_recovered: float | None


def gap_cells(row: HasGaps) -> tuple[str, str]:
    """Gap recovered in perplexity and log-perplexity as shown; none is quoted for a collapsed target."""
    if row.collapsed:
        return "collapsed", "collapsed"
    return _percent(row.gap_recovered), _percent(row.log_gap_recovered)


def figure_gap_cells(figures: Mapping[str, Any]) -> tuple[str, str]:
    """``gap_cells`` of measured figures (``ppl_full``, ``ppl_compressed``, ``ppl_prompted``)."""
    if collapsed(figures["ppl_full"], figures["ppl_compressed"]):
        return "collapsed", "collapsed"
    return _percent(gap_recovered(figures)), _percent(log_gap_recovered(figures))


def table_rows(points: list[ReportPoint]) -> list[list[str]]:
    """The rows every format shows: what a user gets by deploying, target by target."""
    return [
        [p.target, f"{p.ppl_full:.2f}" if p.ppl_full is not None else "not recorded", f"{p.ppl_compressed:.2f}",
         f"{p.ppl_prompted:.2f}", *gap_cells(p), p.prompt if p.served else "none", p.explanation]
        for p in points
    ]


TABLE_HEADER = ["target", "ppl full", "ppl compressed", "ppl prompted", "gap recovered (ppl)",
                "gap recovered (log-ppl)", "served prompt", "why"]


def by_windows(points: list[ReportPoint]) -> dict[str, list[ReportPoint]]:
    """Points grouped by the windows they were measured on; groups are never compared with each other."""
    groups: dict[str, list[ReportPoint]] = {}
    for p in points:
        groups.setdefault(p.eval_key, []).append(p)
    return groups


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown(model: str, points: list[ReportPoint]) -> str:
    lines = [
        f"### {model}: what a prompt wins back on each compressed target",
        "",
        "Each table was measured on one set of windows; tables on different windows are not comparable. Gap "
        "recovered is (compressed - prompted) / (compressed - full), in perplexity and in log-perplexity; a target "
        f"beyond {COLLAPSE_RATIO:g}x the full model's perplexity is collapsed and no gap is quoted.",
    ]
    for group in by_windows(points).values():
        lines += ["", f"Measured on {_md_cell(group[0].eval_windows)}:", "",
                  "| " + " | ".join(TABLE_HEADER) + " |", "|---|" + "---:|" * 5 + "---|---|"]
        lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in table_rows(group)]
    return "\n".join(lines) + "\n"

"""What the evidence says about one model: perplexity per target compression, without and with the best prompt.

Torch- and matplotlib-free; the CLI draws the chart. For each (target compression, eval dataset) the point is the
latest measurement of every prompt, and the prompted value is the best of them (the one the matcher would serve).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .compression import parse_compression
from .records import Evidence


@dataclass(frozen=True)
class ReportPoint:
    target: str
    bits_per_weight: float
    eval_dataset: str
    ppl_without: float
    ppl_with: float
    best_prompt: str
    accepted: bool
    measurements: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(evidence: list[Evidence]) -> list[ReportPoint]:
    latest: dict[tuple[str, str, str], Evidence] = {}
    for item in evidence:  # oldest first, so later measurements of the same prompt win
        latest[(item.target_compression, item.measurement.eval_dataset, item.prompt_ref)] = item
    groups: dict[tuple[str, str], list[Evidence]] = {}
    for (target, dataset, _), item in latest.items():
        groups.setdefault((target, dataset), []).append(item)
    points = []
    for (target, dataset), items in groups.items():
        best = min(items, key=lambda e: e.measurement.ppl_with)
        points.append(ReportPoint(
            target=target, bits_per_weight=parse_compression(target).severity, eval_dataset=dataset,
            ppl_without=best.measurement.ppl_without, ppl_with=best.measurement.ppl_with, best_prompt=best.prompt_ref,
            accepted=best.accepted, measurements=len(items),
        ))
    return sorted(points, key=lambda p: (p.eval_dataset, p.bits_per_weight, p.target))


def markdown(model: str, points: list[ReportPoint]) -> str:
    lines = [
        f"### {model}: perplexity with and without the best prompt",
        "",
        "| target | bits/weight | eval | ppl without | ppl with | change | best prompt | served |",
        "|---|---:|---|---:|---:|---:|---|---|",
    ]
    for p in points:
        change = (p.ppl_with - p.ppl_without) / p.ppl_without
        lines.append(
            f"| {p.target} | {p.bits_per_weight:g} | {p.eval_dataset} | {p.ppl_without:.2f} | {p.ppl_with:.2f} | "
            f"{change:+.1%} | {p.best_prompt} | {'yes' if p.accepted else 'no'} |"
        )
    return "\n".join(lines) + "\n"

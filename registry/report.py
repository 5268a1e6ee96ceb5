"""What the evidence says about one model: perplexity per target compression, without and with the best prompt.

Torch- and matplotlib-free; the CLI draws the chart. For each (target compression, target identity, eval windows) the
point is the latest measurement of every prompt, and the prompted value is the best of them (the one the matcher
would serve). Points measured on different windows form different series (``eval_key``): they are never compared.
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
    eval_key: str
    eval_windows: str
    target_key: str
    ppl_without: float
    ppl_with: float
    best_prompt: str
    accepted: bool
    measurements: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(evidence: list[Evidence]) -> list[ReportPoint]:
    latest: dict[tuple[str, str, str, str], Evidence] = {}
    for item in evidence:  # oldest first, so later measurements of the same prompt win
        m = item.measurement
        latest[(item.target_compression, m.target_key, m.eval_key, item.prompt_ref)] = item
    groups: dict[tuple[str, str, str], list[Evidence]] = {}
    for (target, target_key, eval_key, _), item in latest.items():
        groups.setdefault((target, target_key, eval_key), []).append(item)
    points = []
    for (target, target_key, eval_key), items in groups.items():
        best = min(items, key=lambda e: e.measurement.ppl_with)
        m = best.measurement
        points.append(ReportPoint(
            target=target, bits_per_weight=parse_compression(target).severity, eval_dataset=m.eval_dataset,
            eval_key=eval_key, eval_windows=m.describe_data(), target_key=target_key,
            ppl_without=m.ppl_without, ppl_with=m.ppl_with, best_prompt=best.prompt_ref,
            accepted=best.accepted, measurements=len(items),
        ))
    return sorted(points, key=lambda p: (p.eval_key, p.bits_per_weight, p.target, p.target_key))


def markdown(model: str, points: list[ReportPoint]) -> str:
    lines = [
        f"### {model}: perplexity with and without the best prompt",
        "",
        "Rows under different windows were measured on different tokens and are not comparable.",
    ]
    for eval_key in dict.fromkeys(p.eval_key for p in points):
        group = [p for p in points if p.eval_key == eval_key]
        lines += [
            "",
            f"Measured on {group[0].eval_windows}:",
            "",
            "| target | model measured | bits/weight | ppl without | ppl with | change | best prompt | served |",
            "|---|---|---:|---:|---:|---:|---|---|",
        ]
        for p in group:
            change = (p.ppl_with - p.ppl_without) / p.ppl_without
            lines.append(
                f"| {p.target} | {p.target_key[:23]} | {p.bits_per_weight:g} | "
                f"{p.ppl_without:.2f} | {p.ppl_with:.2f} | "
                f"{change:+.1%} | {p.best_prompt} | {'yes' if p.accepted else 'no'} |"
            )
    return "\n".join(lines) + "\n"

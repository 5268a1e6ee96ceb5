"""``ctpreg report``: the registry's evidence for a model as a chart (PNG) or a markdown table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ctpreg.registry.errors import InvalidInput, MissingExtra, NotFound
from ctpreg.registry.report import ReportPoint, markdown, summarize

from ..options import JsonFlag
from ..output import emit_json, info
from ..state import state


def report(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Base model whose evidence to show.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="PNG file to write (with --format png).",
    )] = None,
    fmt: Annotated[str, typer.Option("--format", help="png or md.")] = "png",
    as_json: JsonFlag = False,
) -> None:
    """Perplexity against effective bits per weight, with and without prompts, from recorded evidence."""
    points = summarize(state(ctx).registry.evidence(model))
    if not points:
        raise NotFound(f"no evidence recorded for {model!r}: run `ctpreg resolve --validate` first")
    if as_json:
        emit_json([p.to_dict() for p in points])
        return
    if fmt == "md":
        sys.stdout.write(markdown(model, points))
        return
    if fmt != "png" or output is None:
        raise InvalidInput("--format png needs --output FILE.png (or use --format md)")
    draw(model, points, output)
    info(f"wrote {output} ({len(points)} targets)")


def draw(model: str, points: list[ReportPoint], output: Path) -> None:
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise MissingExtra("charts need matplotlib: pip install 'ctpreg[train]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    for eval_key in dict.fromkeys(p.eval_key for p in points):  # one series per set of windows, never mixed
        series = [p for p in points if p.eval_key == eval_key]
        bits = [p.bits_per_weight for p in series]
        label = series[0].eval_windows
        axis.plot(bits, [p.ppl_without for p in series], "o--", label=f"compressed ({label})")
        axis.plot(bits, [p.ppl_with for p in series], "s-", label=f"compressed + best prompt ({label})")
    axis.set_xlabel("effective bits per weight")
    axis.set_ylabel("perplexity (scored tokens only)")
    axis.set_yscale("log")
    axis.set_title(f"{model}: soft prompts on compressed models")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    data = json.dumps([p.to_dict() for p in points], sort_keys=True)
    figure.savefig(output, format="png", metadata={"Description": data})
    plt.close(figure)

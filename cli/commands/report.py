"""``ctpreg report``: what a model's recorded evidence and training targets say, as a chart, a page or a table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ctpreg.registry.errors import InvalidInput, NotFound
from ctpreg.registry.files import check_output, write_output
from ctpreg.registry.report import markdown, summarize

from ..options import JsonFlag
from ..output import emit_json, info
from ..state import state

FORMATS = ("png", "html", "md", "curve")


def report(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Base model whose evidence to show.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="File to write (png and html; md prints to stdout without it).",
    )] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="png (chart + table), html (one self-contained page: chart, tables, provenance), md, or "
        "curve (a png of select perplexity against cumulative steps, one line per prompt name's lineage).",
    )] = "png",
    as_json: JsonFlag = False,
) -> None:
    """Full, compressed and prompted perplexity per target, from validations and the prompts' training targets.

    Example: ctpreg report --model smollm2-135m --format html -o report.html
    """
    if fmt not in FORMATS:
        raise InvalidInput(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if output is not None:
        check_output(output)
    elif fmt != "md" and not as_json:
        raise InvalidInput(f"--format {fmt} needs --output FILE (or use --format md)")
    registry = state(ctx).registry
    if fmt == "curve":
        from ctpreg.registry.curve_chart import curve_png, curves

        records = registry.list_prompts(model=model, include_deprecated=False)
        if as_json:
            emit_json(curves(records))
            return
        assert output is not None  # checked above
        write_output(output, curve_png(model, records))
        info(f"wrote {output}")
        return
    points = summarize(model, registry.evidence(model), registry.list_prompts(model=model))
    if not points:
        raise NotFound(f"nothing measured for {model!r}: train a prompt or run `ctpreg resolve --validate` first")
    if as_json:
        emit_json([p.to_dict() for p in points])
        return
    if fmt == "md":
        text = markdown(model, points)
        if output is None:
            sys.stdout.write(text)
            return
        write_output(output, text.encode())
    else:
        from ctpreg.registry.report_chart import png_bytes

        png = png_bytes(model, points)
        if fmt == "png":
            write_output(output, png)
        else:
            from ctpreg.registry.report_html import page

            write_output(output, page(model, points, png).encode())
    info(f"wrote {output} ({len(points)} targets)")

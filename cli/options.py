"""Option types shared by several commands."""

from __future__ import annotations

from typing import Annotated

import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout.")]
ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="Base model slug, e.g. llama-7b.")]
MethodOption = Annotated[
    str | None,
    typer.Option(help="Compression method: none, gptq, bnb-nf4, bnb-fp4, bnb-int8, sparsegpt, wanda, magnitude."),
]
BitsOption = Annotated[
    int | None, typer.Option(help="Bit-width (gptq: 2, 3, 4, 8). Alone, selects every quantizer of that width.")
]
SparsityOption = Annotated[float | None, typer.Option(help="Pruned fraction, strictly between 0 and 1 (e.g. 0.5).")]
GroupSizeOption = Annotated[int | None, typer.Option("--group-size", help="GPTQ group size (default 128).")]
DatasetOption = Annotated[str | None, typer.Option(help="Dataset the prompt was trained on, e.g. wiki.")]
RefArgument = Annotated[str, typer.Argument(help="NAME, NAME:VERSION, NAME@ALIAS or a sha256 prefix (>= 8 hex chars).")]

"""Options shared by the trainer commands (compress, train, eval), and their conversion into configs."""

from __future__ import annotations

from typing import Annotated

import typer

ModelArg = Annotated[
    str, typer.Option("--model", "-m", help="Model slug: smollm2-135m (packaged), llama-7b, opt-1.3b, ...")
]
ModelPathOption = Annotated[
    str | None, typer.Option("--model-path", help="Override the catalog: a local folder, a .gguf file or a hub id.")
]
MethodArg = Annotated[
    str, typer.Option(help="none, gptq, bnb-nf4, bnb-fp4, bnb-int8, sparsegpt, wanda or magnitude.")
]
NmOption = Annotated[str | None, typer.Option("--nm", help="N:M pruning pattern instead of --sparsity, e.g. 2:4.")]
CalibrationOption = Annotated[str, typer.Option(help="Calibration corpus for gptq/sparsegpt/wanda (its train split).")]
CalibrationWindowsOption = Annotated[int, typer.Option(min=1, help="Calibration windows (256 tokens each).")]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda[:N].")]

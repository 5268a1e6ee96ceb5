"""Options shared by the commands that compress or name a compression (compress, train, eval, generate, import).

The compression options are defined once, in ``compression_options``: it adds them to a command's signature (typer
reads signatures) and hands the command one parsed value instead of seven parameters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ctpreg.registry.compression import CompressionSpec, build_spec

from ..options import BitsOption, GroupSizeOption, SparsityOption

if TYPE_CHECKING:
    from ctpreg.trainer.compress import CompressConfig

ModelArg = Annotated[
    str, typer.Option("--model", "-m", help="Model slug: smollm2-135m (packaged), llama-7b, opt-1.3b, ...")
]
ModelPathOption = Annotated[
    str | None, typer.Option("--model-path", help="Override the catalog: a local folder, a .gguf file or a hub id.")
]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda[:N].")]
MethodArg = Annotated[
    str, typer.Option(help="Compression method: none, gptq, bnb-nf4, bnb-fp4, bnb-int8, sparsegpt, wanda or magnitude.")
]
NmOption = Annotated[str | None, typer.Option("--nm", help="N:M pruning pattern instead of --sparsity, e.g. 2:4.")]
CalibrationOption = Annotated[str, typer.Option(help="Calibration corpus for gptq/sparsegpt/wanda (its train split).")]
CalibrationWindowsOption = Annotated[int, typer.Option(min=1, help="Calibration windows (256 tokens each).")]

_KEYWORD = inspect.Parameter.KEYWORD_ONLY
_SPEC_OPTIONS = [
    inspect.Parameter("method", _KEYWORD, annotation=MethodArg),
    inspect.Parameter("bits", _KEYWORD, annotation=BitsOption, default=None),
    inspect.Parameter("group_size", _KEYWORD, annotation=GroupSizeOption, default=None),
    inspect.Parameter("sparsity", _KEYWORD, annotation=SparsityOption, default=None),
    inspect.Parameter("nm", _KEYWORD, annotation=NmOption, default=None),
]
_CALIBRATION_OPTIONS = [
    inspect.Parameter("calibration", _KEYWORD, annotation=CalibrationOption, default="wiki"),
    inspect.Parameter("calibration_windows", _KEYWORD, annotation=CalibrationWindowsOption, default=32),
]


@dataclass(frozen=True)
class CompressionRequest:
    """The compression a command was asked for: the spec and the calibration budget."""

    spec: CompressionSpec
    calibration: str
    calibration_windows: int

    def config(self) -> CompressConfig:
        from ctpreg.trainer.compress import CompressConfig

        return CompressConfig(spec=self.spec, calibration=self.calibration,
                              calibration_windows=self.calibration_windows)


def compression_options(*, calibrated: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the compression options after its ``model`` option.

    The command declares ``compression: CompressionRequest`` (``calibrated=True``: it compresses) or
    ``spec: CompressionSpec`` (it only names a compression); a bad combination fails before the command runs.
    """
    receiver = "compression" if calibrated else "spec"
    added = _SPEC_OPTIONS + (_CALIBRATION_OPTIONS if calibrated else [])

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != receiver]
        at = next(i for i, p in enumerate(own) if p.name == "model") + 1
        parameters = [p.replace(kind=_KEYWORD) for p in own[:at] + added + own[at:]]

        @functools.wraps(command)
        def run(**options: Any) -> Any:
            spec = build_spec(
                options.pop("method"), bits=options.pop("bits"), group_size=options.pop("group_size"),
                sparsity=options.pop("sparsity"), nm=options.pop("nm"),
            )
            value = CompressionRequest(spec, options.pop("calibration"), options.pop("calibration_windows")) \
                if calibrated else spec
            return command(**options, **{receiver: value})

        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate

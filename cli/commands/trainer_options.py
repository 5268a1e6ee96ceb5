"""Options shared by the commands that compress or name a compression (compress, train, eval, generate, import)
and by those that run torch (``--threads``).

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

from ctpreg.registry.compression import CompressionSpec, build_spec, parse_compression
from ctpreg.registry.errors import InvalidInput

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
ThreadsOption = Annotated[int | None, typer.Option(
    "--threads", min=1, max=1024,
    help=("Threads torch computes with (default: the CPUs this process may use). When several torch jobs share a "
          "machine, give each --threads so that their sum is at most its cores, e.g. two jobs on 2 cores: "
          "--threads 1 each."),
)]
MethodArg = Annotated[
    str, typer.Option(help="Compression method: none, gptq, bnb-nf4, bnb-fp4, bnb-int8, sparsegpt, wanda or magnitude.")
]
NmOption = Annotated[str | None, typer.Option("--nm", help="N:M pruning pattern instead of --sparsity, e.g. 2:4.")]
CalibrationOption = Annotated[str, typer.Option(help="Calibration corpus for gptq/sparsegpt/wanda (its train split).")]
CalibrationWindowsOption = Annotated[int, typer.Option(min=1, help="Calibration windows (256 tokens each).")]
TargetsOption = Annotated[str | None, typer.Option(
    "--targets",
    help=("Train one prompt across several compressions, comma-separated canonical specs, e.g. "
          "gptq-w2-g128,gptq-w3-g128,gptq-w4-g128,sparsegpt-s50 (instead of --method and its levels)."),
)]
OptionalMethodArg = Annotated[str | None, MethodArg.__metadata__[0]]

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
    """The compression a command was asked for: the spec (the first, with ``--targets``), every spec asked for, and
    the calibration budget."""

    spec: CompressionSpec
    calibration: str
    calibration_windows: int
    targets: tuple[CompressionSpec, ...] = ()

    def config(self) -> CompressConfig:
        return self.configs()[0]

    def configs(self) -> list[CompressConfig]:
        from ctpreg.trainer.compress import CompressConfig

        return [CompressConfig(spec=spec, calibration=self.calibration, calibration_windows=self.calibration_windows)
                for spec in self.targets or (self.spec,)]


def _parse_targets(text: str, options: dict[str, Any]) -> tuple[CompressionSpec, ...]:
    given = [f"--{name.replace('_', '-')}" for name in ("method", "bits", "group_size", "sparsity", "nm")
             if options.get(name) is not None]
    if given:
        raise InvalidInput(f"--targets names every compression in full; drop {', '.join(given)}")
    specs = tuple(parse_compression(part.strip()) for part in text.split(",") if part.strip())
    if len({spec.canonical for spec in specs}) != len(specs) or len(specs) < 2:
        raise InvalidInput("--targets needs at least two distinct compressions, e.g. gptq-w3-g128,gptq-w4-g128")
    return specs


def compression_options(
    *, calibrated: bool, multi: bool = False, optional: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the compression options after its ``model`` option.

    The command declares ``compression: CompressionRequest`` (``calibrated=True``: it compresses) or
    ``spec: CompressionSpec`` (it only names a compression); a bad combination fails before the command runs.
    ``multi=True`` adds ``--targets`` (several compressions at once, in place of ``--method``). ``optional=True``:
    the command gets None when no compression was named (it takes one from elsewhere, e.g. ``train --continue``).
    """
    receiver = "compression" if calibrated else "spec"
    added = _SPEC_OPTIONS + (_CALIBRATION_OPTIONS if calibrated else [])
    if multi:
        added = [added[0].replace(annotation=OptionalMethodArg, default=None), *added[1:],
                 inspect.Parameter("targets", _KEYWORD, annotation=TargetsOption, default=None)]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != receiver]
        at = next(i for i, p in enumerate(own) if p.name == "model") + 1
        parameters = [p.replace(kind=_KEYWORD) for p in own[:at] + added + own[at:]]

        @functools.wraps(command)
        def run(**options: Any) -> Any:
            targets_text = options.pop("targets", None)
            targets = _parse_targets(targets_text, options) if targets_text is not None else ()
            if targets:
                spec = targets[0]
            elif options.get("method") is None and optional:
                given = [name for name in ("bits", "group_size", "sparsity", "nm") if options.pop(name) is not None]
                if given:
                    raise InvalidInput(f"--{given[0].replace('_', '-')} needs --method")
                for name in ("method", "calibration", "calibration_windows"):
                    options.pop(name, None)
                return command(**options, **{receiver: None})
            elif options.get("method") is None:
                raise InvalidInput("give --method (and its level), or --targets")
            else:
                spec = build_spec(options["method"], bits=options["bits"], group_size=options["group_size"],
                                  sparsity=options["sparsity"], nm=options["nm"])
            for name in ("method", "bits", "group_size", "sparsity", "nm"):
                options.pop(name)
            value = CompressionRequest(spec, options.pop("calibration"), options.pop("calibration_windows"),
                                       targets) if calibrated else spec
            return command(**options, **{receiver: value})

        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate

"""``ctpreg resolve``: rank the prompts that fit a compressed target, best first."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.matcher import Target
from ctpreg.registry.resolver import DEFAULT_MIN_GAIN, DEFAULT_TOP_K
from ctpreg.registry.resolver import resolve as resolve_target
from ctpreg.trainer.threads import torch_threads

from ..options import BitsOption, DatasetOption, GroupSizeOption, JsonFlag, MethodOption, SparsityOption
from ..output import emit_json, info, percent, show_logs, stdout_to_stderr, table
from ..state import state
from .trainer_options import (
    CalibrationOption, CalibrationWindowsOption, DeviceOption, ModelPathOption, ThreadsOption,
)


def resolve(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(
        "--model", "-m",
        help="Target base model slug, e.g. llama-7b (read from --target-path's fingerprint when omitted).",
    )] = None,
    method: MethodOption = None,
    bits: BitsOption = None,
    sparsity: SparsityOption = None,
    group_size: GroupSizeOption = None,
    dataset: DatasetOption = None,
    task: Annotated[str | None, typer.Option(help="Prefer prompts learned for this task.")] = None,
    target_path: Annotated[Path | None, typer.Option(
        "--target-path",
        help=("Your compressed checkpoint folder (GPTQ, compressed-tensors, bitsandbytes or pruned weights): its "
              "model and compression are read from it and --validate measures on it, loaded as it is."),
    )] = None,
    validate: Annotated[bool, typer.Option(
        "--validate", help="Measure the top candidates on the target before serving.",
    )] = False,
    validation_data: Annotated[str | None, typer.Option(
        "--validation-data",
        help="Corpus whose select split is measured to decide what is served (default news).",
    )] = None,
    text_file: Annotated[Path | None, typer.Option("--text-file", help="Measure on this text file instead.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many candidates to measure.")] = DEFAULT_TOP_K,
    min_gain: Annotated[float, typer.Option(
        "--min-gain", help="Serve only a prompt that lowers perplexity by this fraction.",
    )] = DEFAULT_MIN_GAIN,
    revalidate: Annotated[bool, typer.Option("--revalidate", help="Measure again even if evidence exists.")] = False,
    max_windows: Annotated[int, typer.Option("--max-windows", min=1, help="Validation windows.")] = 20,
    calibration: CalibrationOption = "wiki",
    calibration_windows: CalibrationWindowsOption = 32,
    seq_len: Annotated[int, typer.Option(min=2, help="Tokens per validation window.")] = 256,
    model_path: ModelPathOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Find the best prompt for a compressed model. Exit 3 if no prompt shares its embedding space, 4 if
    --validate finds that none helps.

    Examples: ctpreg resolve --model llama-7b --bits 3;
    ctpreg resolve --target-path ./my-gptq-3bit --validate (model and compression read from the checkpoint)
    """
    if not validate and (validation_data is not None or text_file is not None):
        raise InvalidInput("--validation-data / --text-file choose what --validate measures on; add --validate")
    if validation_data is not None and text_file is not None:
        raise InvalidInput("give --validation-data or --text-file, not both")
    options = dict(
        dataset=None if text_file else (validation_data or "news"), text_file=text_file, seq_len=seq_len,
        max_windows=max_windows, calibration=calibration, calibration_windows=calibration_windows,
        model_path=model_path, device=device,
    )
    if target_path is not None and model_path is not None:
        raise InvalidInput("--model-path names a base model to compress; with --target-path nothing is compressed")
    if target_path is None and model is None:
        raise InvalidInput("give --model, or --target-path to read the model from a checkpoint")
    # Only loading a checkpoint or validating runs torch; ranking alone never imports it.
    runs_torch = target_path is not None or validate
    if runs_torch:
        _require_trainer()
    if target_path is not None:  # a bad path or flag is one line, before torch is set up
        _precheck(target_path, method=method, bits=bits, sparsity=sparsity, group_size=group_size)
    with torch_threads(threads) if runs_torch else contextlib.nullcontext():
        validator = None
        if target_path is not None:
            target, validator = _checkpoint_target(
                ctx, target_path, model=model, method=method, bits=bits, sparsity=sparsity, group_size=group_size,
                dataset=dataset, task=task, validate=validate, options=options,
            )
        else:
            target = Target(
                model=model, method=method, bits=bits, sparsity=sparsity, group_size=group_size, dataset=dataset,
                task=task,
            )
            if validate:
                validator = _validator(ctx, options)
        with stdout_to_stderr():
            resolution = resolve_target(
                state(ctx).registry, target, validator=validator, top_k=top_k, min_gain=min_gain,
                revalidate=revalidate,
            )
    if as_json:
        emit_json([c.to_dict() for c in resolution.candidates])
        return
    table(
        f"prompts for {target.describe()}",
        ["#", "ref", "tier", "compression", "dataset", "recovered", "why"],
        [
            (i, c.prompt.ref, c.tier, c.prompt.compression, c.prompt.dataset, percent(c.prompt.recovery), c.explanation)
            for i, c in enumerate(resolution.candidates, 1)
        ],
    )
    info(f"serve: {resolution.served.prompt.ref} (sha256 {resolution.served.prompt.sha256[:12]})")


def _checkpoint_target(ctx: typer.Context, path: Path, *, model: str | None, method: str | None, bits: int | None,
                       sparsity: float | None, group_size: int | None, dataset: str | None, task: str | None,
                       validate: bool, options: dict[str, object]):  # type: ignore[no-untyped-def]
    """Load the user's checkpoint as it is, read what it is, and refuse flags that contradict it."""
    from ctpreg.registry.inference import check_flags

    _require_trainer()
    from ctpreg.trainer.checkpoint import load_checkpoint
    from ctpreg.trainer.validate import CheckpointValidator, ValidationConfig

    with stdout_to_stderr():
        checkpoint = load_checkpoint(path, device=str(options["device"]), method_hint=method)
    described = checkpoint.target
    check_flags(described.spec, method=method, bits=bits, group_size=group_size, sparsity=sparsity)
    name = state(ctx).registry.base_model_for(described.fingerprint, model)
    info(f"{path}: {name} {described.spec.canonical} (target {described.identity[:23]}…)")
    target = Target.for_spec(name, described.spec, identity=described.identity, dataset=dataset, task=task)
    validator = CheckpointValidator(ValidationConfig(**options), checkpoint) if validate else None  # type: ignore[arg-type]
    return target, validator


def _precheck(path: Path, *, method: str | None, bits: int | None, sparsity: float | None,
              group_size: int | None) -> None:
    """What the checkpoint's files say, against the flags: a contradiction is refused before anything loads."""
    from ctpreg.registry.inference import check_flags
    from ctpreg.trainer.checkpoint import precheck

    from_files = precheck(path, method_hint=method)
    if from_files is not None:
        check_flags(from_files, method=method, bits=bits, group_size=group_size, sparsity=sparsity)


def _require_trainer() -> None:
    from ctpreg.trainer.deps import require

    require()
    show_logs()


def _validator(ctx: typer.Context, options: dict[str, object]):  # type: ignore[no-untyped-def]
    _require_trainer()
    from ctpreg.trainer.validate import TargetValidator, ValidationConfig

    return TargetValidator(ValidationConfig(**options), home=state(ctx).settings.home)  # type: ignore[arg-type]

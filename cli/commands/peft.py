"""``ctpreg export --peft DIR`` and ``ctpreg import --peft DIR``: PEFT prompt-tuning adapters in and out."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ctpreg.registry.compression import CompressionSpec
from ctpreg.registry.errors import NotFound

from ..options import JsonFlag, RefArgument
from ..output import emit_json, info
from ..state import state
from .trainer_options import compression_options

PeftDir = Annotated[
    Path, typer.Option("--peft", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors).")
]


def export(ctx: typer.Context, ref: RefArgument, peft: PeftDir) -> None:
    """Write a registry prompt as a PEFT prompt-tuning adapter that PeftModel.from_pretrained loads."""
    from ctpreg.registry.peft_format import export_peft

    prompt = state(ctx).client.fetch(ref)
    model = None if state(ctx).settings.offline else state(ctx).registry.get_model(prompt.record.model)
    base = (model.source if model and model.source else None) or prompt.record.model
    export_peft(prompt.artifact, peft, base_model_name_or_path=base)
    info(f"exported {prompt.record.ref} to {peft}")


@compression_options(calibrated=False)
def import_(
    ctx: typer.Context,
    peft: PeftDir,
    model: Annotated[str, typer.Option("--model", "-m", help="Registered base model the adapter was trained on.")],
    spec: CompressionSpec,
    dataset: Annotated[str, typer.Option(help="Dataset the prompt was learned on.")],
    name: Annotated[str | None, typer.Option(help="Prompt name; default <model>/<compression>/<dataset>.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Publish a PEFT prompt-tuning adapter as a ctpreg prompt (the model must be registered).

    --method and its levels name the compression the prompt was learned on (none if uncompressed).
    """
    from ctpreg.registry.artifacts import write_artifact
    from ctpreg.registry.peft_format import import_peft

    registry = state(ctx).registry
    record = registry.get_model(model)
    if record is None:
        raise NotFound(f"model {model!r} is not registered: ctpreg models add {model} --fingerprint ... first")
    embeddings, metadata = import_peft(peft, model=record, compression=spec, dataset=dataset)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "imported.safetensors"
        write_artifact(path, embeddings, metadata)
        result = registry.publish(path, name=name)
    if as_json:
        emit_json({"name": result.prompt.name, "version": result.prompt.version, "sha256": result.prompt.sha256})
    else:
        info(f"imported {peft} as {result.prompt.ref}")

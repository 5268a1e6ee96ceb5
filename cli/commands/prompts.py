"""Prompt commands: publish, list, show, fetch, deprecate, alias."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ctpreg.registry.errors import NotFound
from ctpreg.registry.files import check_output, write_output
from ctpreg.registry.records import PromptRecord

from ..options import BitsOption, DatasetOption, JsonFlag, MethodOption, ModelOption, RefArgument
from ..output import emit_json, info, percent, table
from ..state import state

MAX_LINEAGE_SHOWN = 20  # parents followed by `show`
SHOWN_CHECKS = 12  # select checks `show` prints (evenly spaced, the last always)

alias_app = typer.Typer(help="Point NAME@ALIAS (e.g. prod) at a version.", no_args_is_help=True)


def publish(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A ctpreg prompt artifact (.safetensors).")],
    name: Annotated[str | None, typer.Option(help="Prompt name; default <model>/<compression>/<dataset>.")] = None,
    alias: Annotated[str | None, typer.Option(help="Also point NAME@ALIAS at the published version.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check an artifact, store it by content, and record it as the next version of NAME (idempotent)."""
    result = state(ctx).registry.publish(path, name=name, alias=alias)
    record = result.prompt
    if as_json:
        emit_json({"name": record.name, "version": record.version, "sha256": record.sha256, "created": result.created})
        return
    verb = "published" if result.created else "already published as"
    info(f"{verb} {record.ref}  sha256 {record.sha256}")


def list_prompts(
    ctx: typer.Context,
    model: ModelOption = None,
    method: MethodOption = None,
    bits: BitsOption = None,
    dataset: DatasetOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List prompt versions, optionally filtered by model, method, bits and dataset."""
    records = state(ctx).registry.list_prompts(
        model=model, methods=[method] if method else None, bits=bits, dataset=dataset
    )
    if as_json:
        emit_json([r.to_dict() for r in records])
        return
    table(
        f"{len(records)} prompt version(s)",
        ["ref", "model", "compression", "dataset", "tokens", "recovered", "aliases", "sha256", "state"],
        [
            (r.ref, r.model, r.compression, r.dataset, r.num_virtual_tokens, percent(r.recovery),
             ",".join(r.aliases), r.sha256[:12], "deprecated" if r.deprecated else "")
            for r in records
        ],
    )


def show(ctx: typer.Context, ref: RefArgument, as_json: JsonFlag = False) -> None:
    """Show one prompt version: identity, compression, metrics and training settings."""
    record = state(ctx).registry.get(ref)
    if as_json:
        emit_json(record.to_dict())
        return
    _print_record(record)
    _print_lineage(state(ctx).registry, record)


def _print_record(record: PromptRecord) -> None:
    rows = [(key, value) for key, value in record.to_dict().items() if key not in {"metrics", "training"}]
    rows += [(f"metrics.{k}", v) for k, v in sorted(record.metrics.items())]
    rows += [(f"training.{k}", v) for k, v in sorted(record.training.items()) if k != "curve"]
    table(record.ref, ["field", "value"], rows)


def _print_lineage(registry: Any, record: PromptRecord) -> None:
    """The chain of parents (each with its cumulative steps and recovery) and the select-split curve."""
    chain, current = [record], record
    while (parent := current.lineage.parent_ref) is not None and len(chain) < MAX_LINEAGE_SHOWN:
        try:
            current = registry.get(parent)
        except NotFound:
            break
        chain.append(current)
    if len(chain) > 1:
        info("lineage: " + " <- ".join(
            f"{r.ref} ({r.lineage.steps_total or '?'} steps, "
            f"{f'{r.recovery:.0%}' if r.recovery is not None else '?'} of the gap)" for r in chain))
    curve = record.lineage.select_curve
    if curve:
        shown = list(curve[:: -(-len(curve) // SHOWN_CHECKS)])
        if shown[-1] != curve[-1]:
            shown.append(curve[-1])
        table(f"select perplexity by cumulative step ({len(curve)} checks; loss "
              f"{_loss_span(record.lineage.loss_curve)})", ["step", "select ppl"],
              [(step, f"{ppl:.2f}") for step, ppl in shown])


def _loss_span(points: tuple[tuple[int, float], ...]) -> str:
    return f"{points[0][1]:.3f} at step {points[0][0]} -> {points[-1][1]:.3f} at {points[-1][0]}" if points else "n/a"


def fetch(
    ctx: typer.Context,
    ref: RefArgument,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the artifact here (default: print the cached path).",
    )] = None,
    as_json: JsonFlag = False,
) -> None:
    """Download a prompt into the local cache (sha256-verified) and optionally copy it to a file."""
    if output is not None:
        check_output(output)  # before anything is downloaded
    prompt = state(ctx).client.fetch(ref)
    target = prompt.path
    if output is not None:
        target = write_output(output, prompt.data)
    if as_json:
        emit_json({"ref": prompt.record.ref, "sha256": prompt.record.sha256, "path": str(target)})
    else:
        info(f"{prompt.record.ref} -> {target}  sha256 {prompt.record.sha256}")


def deprecate(ctx: typer.Context, ref: RefArgument) -> None:
    """Hide a version from resolve (it stays fetchable); 'latest' moves back if it pointed here."""
    record = state(ctx).registry.deprecate(ref)
    info(f"deprecated {record.ref}")


@alias_app.command("set")
def alias_set(
    ctx: typer.Context,
    ref: RefArgument,
    alias: Annotated[str, typer.Argument(help="Alias to point at REF, e.g. prod.")],
) -> None:
    """Point NAME@ALIAS at the version REF names (moves it if it exists)."""
    record = state(ctx).registry.set_alias(ref, alias)
    info(f"{record.name}@{alias} -> {record.ref}")

"""``ctpreg resolve``: rank the prompts that fit a compressed target, best first."""

from __future__ import annotations

from typing import Annotated

import typer

from ctpreg.registry.matcher import Target
from ctpreg.registry.resolver import resolve as resolve_target

from ..options import BitsOption, DatasetOption, GroupSizeOption, JsonFlag, MethodOption, SparsityOption
from ..output import emit_json, info, percent, table
from ..state import state


def resolve(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Target base model slug, e.g. llama-7b.")],
    method: MethodOption = None,
    bits: BitsOption = None,
    sparsity: SparsityOption = None,
    group_size: GroupSizeOption = None,
    dataset: DatasetOption = None,
    task: Annotated[str | None, typer.Option(help="Prefer prompts learned for this task.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Find the best prompt for a compressed model. Exit 3 if no prompt shares its embedding space.

    Example: ctpreg resolve --model llama-7b --bits 3
    """
    target = Target(
        model=model, method=method, bits=bits, sparsity=sparsity, group_size=group_size, dataset=dataset, task=task
    )
    resolution = resolve_target(state(ctx).registry, target)
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
    info(f"serve: [bold]{resolution.served.prompt.ref}[/bold] (sha256 {resolution.served.prompt.sha256[:12]})")

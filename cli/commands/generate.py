"""``ctpreg generate``: see what a resolved prompt does to a compressed model's output."""

from __future__ import annotations

from typing import Annotated

import typer

from ctpreg.registry.compression import build_spec

from ..options import BitsOption, GroupSizeOption, JsonFlag, SparsityOption
from ..output import emit_json, info, show_logs, stdout_to_stderr
from ..state import state


def generate(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="The text to continue.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model slug.")],
    method: Annotated[str, typer.Option(help="Compression of the model to generate with.")],
    bits: BitsOption = None,
    group_size: GroupSizeOption = None,
    sparsity: SparsityOption = None,
    no_prompt: Annotated[bool, typer.Option(
        "--no-prompt", help="Generate without any prompt, for comparison.",
    )] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate (greedy).")] = 40,
    calibration: Annotated[str, typer.Option(help="Calibration corpus for compressing the model.")] = "wiki",
    calibration_windows: Annotated[int, typer.Option(min=1, help="Calibration windows.")] = 32,
    model_path: Annotated[str | None, typer.Option("--model-path", help="Local folder, .gguf file or hub id.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Greedy continuation of TEXT by the compressed model, with the prompt the registry resolves for it."""
    from ctpreg.trainer.deps import require

    require()
    show_logs()
    spec = build_spec(method, bits=bits, group_size=group_size, sparsity=sparsity)
    with stdout_to_stderr():
        import torch

        from ctpreg.trainer import pipeline
        from ctpreg.trainer.compress import CompressConfig

        resolved = None
        if not no_prompt:
            resolved = state(ctx).client.resolve(
                model, method=spec.method, bits=spec.bits, sparsity=spec.sparsity, group_size=spec.group_size
            )
        loaded = pipeline.load_base(model, model_path=model_path, device=device)
        compressed = pipeline.compress_loaded(
            loaded, CompressConfig(spec, calibration=calibration, calibration_windows=calibration_windows),
            state(ctx).settings.home,
        ).model
        runner = resolved.apply(compressed, loaded.tokenizer) if resolved else compressed
        ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"].to(loaded.device)
        with torch.no_grad():
            output = runner.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=loaded.tokenizer.eos_token_id,
            )
        completion = loaded.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
    prompt_ref = resolved.record.ref if resolved else None
    if as_json:
        emit_json({"text": text, "completion": completion, "prompt": prompt_ref, "compression": spec.canonical})
        return
    info(f"{model} {spec.canonical}, prompt: {prompt_ref or 'none'}")
    print(text + completion)

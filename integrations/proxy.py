"""An OpenAI-compatible proxy in front of a vLLM server that puts the right ctpreg prompt in front of every request.

At start-up it describes the served checkpoint from its files (fingerprint from its tokenizer and embedding table,
compression from its config and records, identity from its weight files: ``registry.load_time.describe_folder``),
resolves the prompt once through the client (the matcher's tiers put evidence measured on this very checkpoint
first) and keeps it. Each ``/v1/completions`` body is then parsed strictly and validated field by field
(``integrations.openai_body``), tokenized here, turned into ``prompt_embeds`` (``integrations.vllm``) and forwarded.
Answers and streams come back decoded (never in the engine's content-encoding), with ``usage`` recounted for the
client (``integrations.openai_usage``): ``prompt_tokens`` the client's own tokens, ``ctpreg_virtual_tokens`` the
prompt's positions (once per sequence), ``total_tokens`` = ``prompt_tokens`` + ``completion_tokens``; in a stream,
the chunks that carry ``usage`` (``stream_options.include_usage``). With ``no_prompt`` the same checks run and the
checked body goes on as it is (the engine tokenizes it; ``usage`` is the engine's), for A/B comparison against the
same upstream. Neither mode ever passes on a client's ``prompt_embeds``: the engine unpickles them.

Limits (defaults in ``integrations.limits``; each refusal a 400 in OpenAI's error shape naming the field, 413 for
size, never a 5xx of the proxy's own): the whole body (``max_body_bytes``, 1 MiB; JSON nesting 32 levels); the
sequences of one prompt (``max_batch``, 16); ``n`` and ``best_of`` (``max_n``, 16); and the positions of each
sequence, virtual tokens + its tokens + ``max_tokens`` (16 when absent, as in OpenAI and vLLM), at most
``max_request_tokens`` (the checkpoint's context length). So the engine never gets a sequence it must refuse for
its length, and one request makes the proxy build at most ``max_batch * max_request_tokens`` embedding rows.
Without a prompt the engine's own context length bounds positions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ctpreg.registry.client import Client, ResolvedPrompt
from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.load_time import LoadedTarget, describe_folder

from .limits import (
    DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_N, DEFAULT_MAX_REQUEST_TOKENS, DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT_S,
)
from .openai_body import BodyError, BodyLimits, CompletionRequest, as_batch, parse, validate
from .openai_usage import Counts
from .vllm import VllmPrompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedPrompt:
    """What the proxy serves: the checkpoint as described from its files, and the prompt chosen for it (None with
    ``no_prompt``)."""

    target: LoadedTarget
    builder: VllmPrompt
    resolved: ResolvedPrompt | None
    max_request_tokens: int = DEFAULT_MAX_REQUEST_TOKENS

    def describe(self) -> dict[str, Any]:
        prompt = None
        if self.resolved is not None:
            prompt = {
                "ref": self.resolved.record.ref, "sha256": self.resolved.record.sha256,
                "num_virtual_tokens": self.virtual_tokens,
                "tier": self.resolved.tier, "explanation": self.resolved.explanation,
            }
        return {"prompt": prompt, "target": self.target.to_dict(),
                "add_special_tokens": self.builder.add_special_tokens, "max_request_tokens": self.max_request_tokens}

    @property
    def virtual_tokens(self) -> int:
        """Positions the prompt takes in front of each sequence (0 without one)."""
        return 0 if self.builder.prompt is None else int(self.builder.prompt.shape[0])


def prepare(model_path: str | Path, *, client: Client | None, no_prompt: bool = False, ref: str | None = None,
            model_name: str | None = None, method: str | None = None, dtype: Any = None,
            max_request_tokens: int | None = None) -> ServedPrompt:
    """Describe the served checkpoint and choose its prompt: ``ref`` if given (it must share the checkpoint's
    embedding space), else the matcher's choice for this checkpoint. ``max_request_tokens`` (default: the
    checkpoint's context length) bounds the positions of each sequence of a request (module docstring)."""
    from transformers import AutoTokenizer

    folder = Path(model_path).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise InvalidInput(f"--model-path {folder} is not a checkpoint folder (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{folder} has no usable tokenizer (the fingerprint needs it): {exc}") from None
    bare = VllmPrompt.from_checkpoint(folder, None, tokenizer=tokenizer, dtype=dtype)
    vocab_size, hidden = (int(n) for n in bare.table.shape)
    target = describe_folder(folder, tokenizer, vocab_size=vocab_size, hidden_size=hidden, method_hint=method)
    limit = max_request_tokens or _context_length(folder)
    if no_prompt:
        return ServedPrompt(target, bare, None, limit)
    client = client or Client.from_env()
    resolved = client.fetch(ref) if ref is not None else client.resolve_loaded(target, model_name=model_name)
    return ServedPrompt(target, bare.carrying(resolved), resolved, limit)


def _context_length(folder: Path) -> int:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    value = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else DEFAULT_MAX_REQUEST_TOKENS


@dataclass(frozen=True)
class Forward:
    """A checked request as the engine gets it, and how to recount its ``usage`` (None: the engine's stands)."""

    body: dict[str, Any]
    counts: Counts | None = None


def checked(raw: bytes, served: ServedPrompt, limits: BodyLimits) -> Forward:
    """The request to send for the client's body ``raw``, or a ``BodyError``: the same checks in both modes."""
    request = validate(parse(raw), limits)
    if served.builder.prompt is None:
        return Forward(request.model_dump(exclude_none=True))
    return with_prompt(request, served)


def with_prompt(request: CompletionRequest, served: ServedPrompt) -> Forward:
    """The request vLLM gets: ``prompt`` replaced by ``prompt_embeds`` carrying the ctpreg prompt, each sequence
    within ``max_request_tokens`` positions together with its virtual and new tokens."""
    if request.echo:
        raise BodyError("echo is not available through the prompt proxy: the engine sees embeddings, not text", "echo")
    limit, virtual = served.max_request_tokens, served.virtual_tokens
    new_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
    room = limit - virtual - new_tokens
    if room < 1:
        raise BodyError(f"max_tokens: {virtual} virtual tokens and {new_tokens} new ones leave no room for the prompt "
                        f"in this proxy's {limit} positions per sequence", "max_tokens")
    ids = []
    for index, item in enumerate(as_batch(request.prompt)):
        # No token stands for more characters than the longest in the vocabulary: a longer text cannot fit.
        if isinstance(item, str) and len(item) > room * served.builder.longest_token_chars:
            raise BodyError(f"prompt: sequence {index} is longer than this proxy's {limit} positions per sequence "
                            "can hold", "prompt")
        try:
            tokens = served.builder.token_ids(item)
        except InvalidInput as exc:
            raise BodyError(f"prompt: sequence {index}: {exc}", "prompt") from None
        if len(tokens) > room:
            raise BodyError(f"prompt: sequence {index} needs {virtual + len(tokens) + new_tokens} positions ({virtual} "
                            f"virtual + {len(tokens)} tokens + {new_tokens} max_tokens), over this proxy's {limit} "
                            "per sequence", "prompt")
        ids.append(tokens)
    forwarded = request.model_dump(exclude_none=True, exclude={"prompt"})
    forwarded["prompt_embeds"] = served.builder.completion_body(ids, model=request.model or "")["prompt_embeds"]
    return Forward(forwarded, Counts(client_tokens=sum(map(len, ids)), virtual_tokens=virtual * len(ids)))


def _error_body(status: int, message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error format, so clients show it as they show the engine's own."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse(_error_body(status, message, kind, param), status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_large = BodyError(f"request body over {limit} bytes", status=413)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise too_large
    return bytes(body)


def create_app(served: ServedPrompt, upstream: str, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_batch: int = DEFAULT_MAX_BATCH, max_n: int = DEFAULT_MAX_N, timeout_s: float = DEFAULT_TIMEOUT_S,
               transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The proxy's ASGI app (``transport`` replaces the network to the upstream, e.g. an in-process engine)."""
    upstream = upstream.rstrip("/")
    limits = BodyLimits(vocab_size=int(served.builder.table.shape[0]), max_batch=max_batch, max_n=max_n)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        pool = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=upstream, timeout=timeout_s, limits=pool, transport=transport) as http:
            app.state.http = http
            yield

    app = FastAPI(title="ctpreg prompt proxy", version="1", lifespan=lifespan)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """The prompt served (ref, sha256) and whether the upstream engine answers its own /health."""
        try:
            answer = await request.app.state.http.get("/health", timeout=5.0)
            state = {"url": upstream, "ok": answer.status_code == 200, "status": answer.status_code}
        except httpx.HTTPError as exc:
            state = {"url": upstream, "ok": False, "error": type(exc).__name__}
        body = {"status": "ok" if state["ok"] else "upstream unavailable", **served.describe(), "upstream": state}
        return JSONResponse(body, status_code=200 if state["ok"] else 503)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return await _forward(request.app.state.http, "GET", "/v1/models", None)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            raw = await _read_body(request, max_body_bytes)
            forward = await run_in_threadpool(checked, raw, served, limits)
        except BodyError as exc:
            return _error(exc.status, str(exc), param=exc.param)
        return await _forward(request.app.state.http, "POST", "/v1/completions", forward)

    return app


async def _forward(http: httpx.AsyncClient, method: str, path: str, forward: Forward | None) -> Response:
    """Send to the engine; its answers come back decoded, its failures as clean errors (502 unreachable or broken,
    504 timed out; the engine's own 4xx, which are the request's fault, keep their status and message)."""
    request = http.build_request(method, path, json=None if forward is None else forward.body)
    counts = None if forward is None else forward.counts
    try:
        answer = await http.send(request, stream=True)
    except httpx.TimeoutException:
        return _error(504, "the upstream engine did not answer in time", "upstream_error")
    except httpx.HTTPError as exc:
        return _error(502, f"the upstream engine is unreachable ({type(exc).__name__})", "upstream_error")
    if forward is not None and forward.body.get("stream") and answer.status_code == 200:
        chunks = _relay(answer) if counts is None else counts.stream(_relay(answer))
        return StreamingResponse(chunks, status_code=200,
                                 media_type=answer.headers.get("content-type", "text/event-stream"),
                                 headers={"cache-control": "no-cache"}, background=BackgroundTask(answer.aclose))
    try:
        content = await answer.aread()  # decoded: the engine's content-encoding stops here
    except httpx.HTTPError as exc:
        return _error(502, f"the upstream engine broke off its answer ({type(exc).__name__})", "upstream_error")
    finally:
        await answer.aclose()
    if answer.status_code >= 500:
        log.warning("upstream %s %s answered %d", method, path, answer.status_code)
        return _error(502,
                      f"the upstream engine failed ({answer.status_code}): "
                      f"{content[:500].decode(errors='replace')}",
                      "upstream_error")
    if counts is not None and answer.status_code == 200:
        content = counts.answer(content)
    return Response(content, status_code=answer.status_code,
                    media_type=answer.headers.get("content-type", "application/json"))


async def _relay(answer: httpx.Response) -> AsyncIterator[bytes]:
    """The engine's stream, decoded from its content-encoding. The status line is sent by the time it breaks off,
    so a break-off ends the stream with an error event, as vLLM reports its own errors inside a stream."""
    try:
        async for chunk in answer.aiter_bytes():
            yield chunk
    except httpx.HTTPError as exc:
        log.warning("upstream stream broke off: %s", type(exc).__name__)
        message = f"the upstream engine broke off its stream ({type(exc).__name__})"
        yield b"data: " + json.dumps(_error_body(502, message, "upstream_error")).encode() + b"\n\n"

"""An OpenAI-compatible proxy in front of a vLLM server that puts the right ctpreg prompt in front of every request.

At start-up it describes the served checkpoint from its files (fingerprint from its tokenizer and embedding table,
compression from its config and records, identity from its weight files: ``registry.load_time.describe_folder``),
resolves the prompt once through the client (the matcher's tiers put evidence measured on this very checkpoint
first) and keeps it. Each ``/v1/completions`` request is then tokenized here, turned into ``prompt_embeds``
(``integrations.vllm``) and forwarded; responses and streams pass through unchanged. With ``no_prompt`` requests
pass through untouched, for A/B comparison against the same upstream.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from ctpreg.registry.client import Client, ResolvedPrompt
from ctpreg.registry.errors import CtpregError, InvalidInput
from ctpreg.registry.load_time import LoadedTarget, describe_folder

from .vllm import VllmPrompt, as_batch

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_TIMEOUT_S = 600.0
#: Cap on prompt + text positions per request when the checkpoint's config names no context length.
DEFAULT_MAX_REQUEST_TOKENS = 4096


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
                "num_virtual_tokens": int(self.builder.prompt.shape[0]) if self.builder.prompt is not None else 0,
                "tier": self.resolved.tier, "explanation": self.resolved.explanation,
            }
        return {"prompt": prompt, "target": self.target.to_dict(),
                "add_special_tokens": self.builder.add_special_tokens, "max_request_tokens": self.max_request_tokens}

    @property
    def max_text_chars(self) -> int:
        """A text longer than this cannot fit in ``max_request_tokens`` positions, whatever it says, so it is
        refused before it is tokenized."""
        return self.max_request_tokens * self.builder.longest_token_chars


def prepare(model_path: str | Path, *, client: Client | None, no_prompt: bool = False, ref: str | None = None,
            model_name: str | None = None, method: str | None = None, dtype: Any = None,
            max_request_tokens: int | None = None) -> ServedPrompt:
    """Describe the served checkpoint and choose its prompt: ``ref`` if given (it must share the checkpoint's
    embedding space), else the matcher's choice for this checkpoint. ``max_request_tokens`` (default: the
    checkpoint's context length) bounds the embeddings one request may make the proxy build."""
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


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    """An error body in the OpenAI format, so clients show it as they show the engine's own."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


def with_prompt(body: dict[str, Any], served: ServedPrompt) -> dict[str, Any]:
    """The request body vLLM gets: ``prompt`` replaced by ``prompt_embeds`` carrying the ctpreg prompt."""
    if "prompt_embeds" in body:
        raise InvalidInput("this proxy builds prompt_embeds itself; send prompt (text or token ids)")
    if body.get("echo"):
        raise InvalidInput("echo is not available through the prompt proxy: the engine sees embeddings, not text")
    if "prompt" not in body:
        raise InvalidInput("prompt is required")
    batch = as_batch(body["prompt"])
    for item in batch:  # id ranges are checked where the rows are gathered (registry.prompted.embeds_with_prompt)
        if isinstance(item, str) and len(item) > served.max_text_chars:
            raise InvalidInput(f"prompt longer than this proxy's {served.max_request_tokens} positions per request")
    ids = [served.builder.token_ids(item) for item in batch]
    positions = sum(len(item) for item in ids) + len(ids) * int(served.builder.prompt.shape[0])
    if positions > served.max_request_tokens:
        raise InvalidInput(f"the request needs {positions} positions (prompt included), over this proxy's "
                           f"{served.max_request_tokens} per request")
    forwarded = {key: value for key, value in body.items() if key != "prompt"}
    encoded = served.builder.completion_body(ids, model=str(body.get("model", "")))["prompt_embeds"]
    forwarded["prompt_embeds"] = encoded
    return forwarded


def create_app(served: ServedPrompt, upstream: str, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               timeout_s: float = DEFAULT_TIMEOUT_S, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The proxy's ASGI app (``transport`` replaces the network to the upstream, e.g. an in-process engine)."""
    upstream = upstream.rstrip("/")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=upstream, timeout=timeout_s, limits=limits, transport=transport) as http:
            app.state.http = http
            yield

    app = FastAPI(title="ctpreg prompt proxy", version="1", lifespan=lifespan)

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
        return await _forward(request.app.state.http, "GET", "/v1/models", None, stream=False)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            raw = await _read_body(request, max_body_bytes)
        except _TooLarge:
            return _error(413, f"request body over {max_body_bytes} bytes")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, f"request body is not JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        if served.resolved is not None:
            try:
                body = await run_in_threadpool(with_prompt, body, served)
            except CtpregError as exc:
                return _error(400, str(exc))
        return await _forward(request.app.state.http, "POST", "/v1/completions", body, stream=bool(body.get("stream")))

    return app


async def _forward(http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None, *,
                   stream: bool) -> Response:
    """Send to the engine; its answers pass through, its failures become clean errors (502 unreachable or broken,
    504 timed out; the engine's own 4xx, which are the request's fault, keep their status and message)."""
    request = http.build_request(method, path, json=body)
    try:
        answer = await http.send(request, stream=True)
    except httpx.TimeoutException:
        return _error(504, "the upstream engine did not answer in time", "upstream_error")
    except httpx.HTTPError as exc:
        return _error(502, f"the upstream engine is unreachable ({type(exc).__name__})", "upstream_error")
    media = answer.headers.get("content-type", "application/json")
    if stream and answer.status_code == 200:
        return StreamingResponse(answer.aiter_raw(), status_code=200, media_type=media,
                                 background=BackgroundTask(answer.aclose))
    try:
        content = await answer.aread()
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
    return Response(content, status_code=answer.status_code, media_type=media)

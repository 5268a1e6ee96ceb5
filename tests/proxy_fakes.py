"""Stand-ins for the prompt proxy's tests: an in-process engine that answers like vLLM's OpenAI server and records
what it receives, and a served prompt over a tiny random embedding table (mechanics only, no model)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import zlib

import httpx
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.testclient import TestClient

from ctpreg.integrations.proxy import ServedPrompt, create_app
from ctpreg.integrations.vllm import VllmPrompt
from tiny import tiny_tokenizer

VIRTUAL = 3  # rows of the tiny served prompt
HIDDEN = 16
PADDED_ROWS = 7  # the table has rows past the tokenizer's vocabulary, as checkpoints often do


def decode(encoded: str) -> torch.Tensor:
    """What vLLM does with a prompt_embeds field (the test plays the engine)."""
    return torch.load(io.BytesIO(base64.b64decode(encoded)), weights_only=True)


def tiny_served(*, prompted: bool = True, max_request_tokens: int = 64) -> ServedPrompt:
    """A served prompt of ``VIRTUAL`` rows (or none) over a random [vocab + padding, HIDDEN] table."""
    tokenizer = tiny_tokenizer()
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(len(tokenizer) + PADDED_ROWS, HIDDEN, generator=generator)
    rows = torch.randn(VIRTUAL, HIDDEN, generator=generator) if prompted else None
    builder = VllmPrompt(table=table, tokenizer=tokenizer, prompt=rows)
    return ServedPrompt(target=None, builder=builder, resolved=None,  # type: ignore[arg-type]
                        max_request_tokens=max_request_tokens)


def positions(body: dict) -> list[int]:
    """Prompt positions per sequence, as vLLM counts them (embedding rows, ids, or one per word of a text)."""
    if "prompt_embeds" in body:
        embeds = body["prompt_embeds"]
        return [decode(item).shape[0] for item in (embeds if isinstance(embeds, list) else [embeds])]
    prompt = body["prompt"]
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    return [len(item.split()) if isinstance(item, str) else len(item) for item in prompt]


class Engine:
    """A stand-in for vLLM's OpenAI server: records each request body and answers what the test asks, gzipped when
    ``gzip`` is set (as a server behind compressing middleware answers a client that accepts gzip)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.status = 200
        self.gzip = False
        self.app = FastAPI()

        @self.app.get("/health")
        async def health() -> JSONResponse:
            return JSONResponse({}, status_code=self.status)

        @self.app.get("/v1/models")
        async def models() -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": "served", "object": "model"}]})

        @self.app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            body = await request.json()
            self.bodies.append(body)
            if self.status != 200:
                return JSONResponse({"error": {"message": "engine says no"}}, status_code=self.status)
            sequences = positions(body)
            choices = len(sequences) * body.get("n", 1)
            usage = {"prompt_tokens": sum(sequences), "completion_tokens": 2 * choices,
                     "total_tokens": sum(sequences) + 2 * choices}
            if body.get("stream"):
                return self._stream(choices, usage, body.get("stream_options") or {})
            answer = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body.get("model"),
                      "choices": [{"index": i, "text": "ok", "finish_reason": "length"} for i in range(choices)],
                      "usage": usage}
            content = json.dumps(answer).encode()
            if self.gzip:
                return Response(gzip.compress(content), media_type="application/json",
                                headers={"content-encoding": "gzip"})
            return Response(content, media_type="application/json")

    def _stream(self, choices: int, usage: dict, options: dict) -> StreamingResponse:
        continuous = options.get("continuous_usage_stats")
        events = []
        for text in ("a", "b"):
            for index in range(choices):
                chunk = {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": index, "text": text}]}
                events.append({**chunk, "usage": usage} if continuous else chunk)
        if options.get("include_usage"):
            events.append({"id": "cmpl-1", "object": "text_completion", "choices": [], "usage": usage})
        lines = [f"data: {json.dumps(event)}\n\n".encode() for event in events] + [b"data: [DONE]\n\n"]
        if not self.gzip:
            return StreamingResponse(iter(lines), media_type="text/event-stream")
        packer = zlib.compressobj(wbits=31)  # gzip framing, flushed per event as a streaming server does
        packed = [packer.compress(line) + packer.flush(zlib.Z_SYNC_FLUSH) for line in lines] + [packer.flush()]
        return StreamingResponse(iter(packed), media_type="text/event-stream", headers={"content-encoding": "gzip"})


def proxy_client(served: ServedPrompt, engine: Engine | None, **kwargs) -> TestClient:
    transport = httpx.ASGITransport(app=engine.app) if engine is not None else None
    upstream = "http://engine" if engine is not None else "http://127.0.0.1:9"  # port 9: nothing listens
    return TestClient(create_app(served, upstream, transport=transport, **kwargs))

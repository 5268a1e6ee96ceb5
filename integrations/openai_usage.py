"""``usage`` in the engine's answers, recounted for the client: the engine counts the prompt's virtual tokens as
prompt tokens (they are positions of its ``prompt_embeds``), the client sent none of them.

    "usage": {"prompt_tokens": 12,            # the client's tokens (its ids, or its texts as tokenized here)
              "completion_tokens": 20,        # the engine's count, unchanged
              "total_tokens": 32,             # prompt_tokens + completion_tokens
              "ctpreg_virtual_tokens": 100}   # the soft prompt's positions, once per sequence of the batch

``prompt_tokens_details`` is dropped: the engine's cache counts there cover the virtual positions too. Every other
key passes through, and OpenAI's clients keep unknown keys, so ``ctpreg_virtual_tokens`` reaches their code. In a
stream, every chunk that carries ``usage`` (the last one with ``stream_options.include_usage``, each one with
``continuous_usage_stats``) is recounted the same way; everything else passes through byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

DATA = b"data: "
EVENT_END = b"\n\n"


@dataclass(frozen=True)
class Counts:
    """What one prompted request put in front of the engine."""

    client_tokens: int
    virtual_tokens: int

    def usage(self, engine: dict[str, Any]) -> dict[str, Any]:
        completion = engine.get("completion_tokens")
        completion = completion if isinstance(completion, int) and not isinstance(completion, bool) else 0
        kept = {key: value for key, value in engine.items() if key != "prompt_tokens_details"}
        return {**kept, "prompt_tokens": self.client_tokens, "completion_tokens": completion,
                "total_tokens": self.client_tokens + completion, "ctpreg_virtual_tokens": self.virtual_tokens}

    def answer(self, content: bytes) -> bytes:
        """A whole JSON answer with its ``usage`` recounted; anything else unchanged."""
        try:
            answer = json.loads(content)
        except ValueError:
            return content
        if not isinstance(answer, dict) or not isinstance(answer.get("usage"), dict):
            return content
        return json.dumps({**answer, "usage": self.usage(answer["usage"])}).encode()

    async def stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Server-sent events with each ``usage`` recounted; an event is passed on as soon as it is complete."""
        pending = bytearray()
        async for chunk in chunks:
            pending.extend(chunk)
            *events, rest = bytes(pending).split(EVENT_END)
            pending = bytearray(rest)
            for event in events:
                yield self._event(event) + EVENT_END
        if pending:
            yield bytes(pending)

    def _event(self, event: bytes) -> bytes:
        return DATA + self.answer(event[len(DATA):]) if event.startswith(DATA) else event

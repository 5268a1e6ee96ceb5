"""The body of an OpenAI ``/v1/completions`` request, checked before the prompt proxy does anything with it.

``parse`` reads the bytes strictly: UTF-8 only; no ``NaN``/``Infinity`` and no number that overflows a double
(Python's ``json`` takes both, JSON has neither); no duplicate key (parsers differ on which one wins); no lone
surrogate (``"\\ud800"`` cannot be encoded again, so the tokenizer or the engine would fail on it); nesting at most
``MAX_DEPTH`` deep, measured on the bytes before parsing, so a ``[[[[…`` body never reaches the recursive parser.

``validate`` then gives every field a type and a range (``CompletionRequest``): OpenAI's completion fields, plus
the sampling extras vLLM takes (``VLLM_EXTRAS``). Any other field is refused rather than passed on: the engine
would ignore it without a word or act on something nothing here checked. ``prompt_embeds`` is always refused: the
engine unpickles it, so a client never sends it through ctpreg. Token ids (``prompt``, ``stop_token_ids``,
``allowed_token_ids``, the keys of ``logit_bias``) must lie in the served embedding table; the number of
sequences and ``n``/``best_of`` are bounded by ``BodyLimits``.

A ``null`` stands for the field's default, as in OpenAI's API; the proxy passes on only the fields with values.

Every refusal is a ``BodyError`` naming the top-level field at fault (``param``), which the proxy answers with
OpenAI's error body.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from ctpreg.registry.errors import InvalidInput

from .limits import DEFAULT_MAX_TOKENS, MAX_DEPTH

MAX_STRINGS = 16  # stop strings and bad words (OpenAI takes 4 stop strings, vLLM any number)
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
INT32 = 2**31 - 1
INT64 = 2**63 - 1
VLLM_EXTRAS = (
    "top_k", "min_p", "repetition_penalty", "min_tokens", "stop_token_ids", "include_stop_str_in_output",
    "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "allowed_token_ids", "bad_words",
    "prompt_logprobs", "return_token_ids", "return_tokens_as_token_ids",
)
PROMPT_SHAPES = "must be a string, a list of strings, a list of token ids or a list of token-id lists, none empty"

TextOrIds = str | Sequence[int]

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)  # an unterminated string runs to the end: no rescans
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOKEN_KEY = re.compile("[0-9]{1,10}")


class BodyError(InvalidInput):
    """A request body refused, with the top-level field at fault (None when the body as a whole is)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param, self.status = param, status


@dataclass(frozen=True)
class BodyLimits:
    vocab_size: int  # rows of the served embedding table: every token id must be below it
    max_batch: int  # sequences in one request's prompt
    max_n: int  # choices per sequence (n, best_of)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


Probability = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
Strings = list[str] | str


class CompletionRequest(BaseModel):
    """OpenAI's ``/v1/completions`` fields, then vLLM's sampling extras; no coercion (``"1"`` is not 1, ``true``
    is not an integer)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=1, le=INT32)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Strings | None = None
    seed: Annotated[int, Field(ge=-INT64 - 1, le=INT64)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    suffix: Annotated[str, Field(max_length=4096)] | None = None

    top_k: Annotated[int, Field(ge=-1, le=INT32)] | None = None
    min_p: Probability | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    min_tokens: Annotated[int, Field(ge=0, le=INT32)] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    allowed_token_ids: Annotated[list[int], Field(min_length=1)] | None = None
    bad_words: Annotated[list[str], Field(max_length=MAX_STRINGS)] | None = None
    prompt_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise PydanticCustomError("prompt_empty", "must not be empty")
        try:
            as_batch(value)
        except InvalidInput:
            raise PydanticCustomError("prompt_shape", PROMPT_SHAPES) from None
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_shape(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and len(value) <= MAX_STRINGS and all(isinstance(item, str) for item in value):
            return value
        raise PydanticCustomError("stop_shape", f"must be a string or a list of at most {MAX_STRINGS} strings")


def as_batch(value: Any) -> list[TextOrIds]:
    """One prompt (text, or a list of ids) or several (a list of texts or of id lists), as a list of prompts."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple) or not value:
        raise InvalidInput(f"prompt {PROMPT_SHAPES}")
    items = list(value)
    if all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        return [items]
    if all(isinstance(item, str) for item in items):
        return items
    if all(isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
           for item in items):
        return items
    raise InvalidInput(f"prompt {PROMPT_SHAPES}")


def parse(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``, read strictly (module docstring)."""
    _check_depth(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("request body is not UTF-8") from None
    try:
        body = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant, parse_float=_finite)
    except ValueError as exc:
        if isinstance(exc, BodyError):
            raise
        raise BodyError(f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BodyError("request body must be a JSON object")
    for key, value in body.items():
        if _has_surrogate(key) or _has_surrogate(value):
            raise BodyError("a string holds a lone surrogate (not encodable as UTF-8)", param=_field(key))
    return body


def validate(body: dict[str, Any], limits: BodyLimits) -> CompletionRequest:
    """``body`` as a ``CompletionRequest`` within ``limits``, or a ``BodyError`` naming the field."""
    if "prompt_embeds" in body:
        raise BodyError("this proxy builds prompt_embeds itself; send prompt (text or token ids)", "prompt_embeds")
    try:
        request = CompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise _refusal(exc) from None
    _check_limits(request, limits)
    return request


def _check_depth(raw: bytes) -> None:
    depth = 0
    for byte in _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_DEPTH:
            raise BodyError(f"request body is nested deeper than {MAX_DEPTH} levels")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise BodyError(f"duplicate key {_field(key)!r}", param=_field(key))
        seen.add(key)
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise BodyError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"number {text[:40]} is not finite as a double")
    return value


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(_has_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(_has_surrogate(key) or _has_surrogate(item) for key, item in value.items())
    return False


def _field(name: str) -> str:
    """A client-given name as it may appear in an answer: UTF-8-encodable and short."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")[:100]


def _refusal(exc: ValidationError) -> BodyError:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = first["loc"]
    param = _field(str(loc[0])) if loc else None
    if first["type"] == "extra_forbidden" and len(loc) == 1:
        return BodyError(f"unknown field {param!r}: this proxy takes OpenAI's completion fields and vLLM's "
                         f"sampling extras ({', '.join(VLLM_EXTRAS)})", param)
    if first["type"] == "missing":
        return BodyError(f"{param} is required", param)
    return BodyError(f"{param}: {first['msg']}", param)


def _check_ids(ids: list[int], limits: BodyLimits, param: str) -> None:
    if ids and (min(ids) < 0 or max(ids) >= limits.vocab_size):
        raise BodyError(f"{param}: token ids must lie in [0, {limits.vocab_size})", param)


def _check_limits(request: CompletionRequest, limits: BodyLimits) -> None:
    batch = as_batch(request.prompt)
    if len(batch) > limits.max_batch:
        raise BodyError(f"prompt holds {len(batch)} sequences; this proxy takes at most {limits.max_batch} per "
                        "request", "prompt")
    _check_ids([token for item in batch if not isinstance(item, str) for token in item], limits, "prompt")
    _check_ids(request.stop_token_ids or [], limits, "stop_token_ids")
    _check_ids(request.allowed_token_ids or [], limits, "allowed_token_ids")
    keys = list(request.logit_bias or {})
    if not all(_TOKEN_KEY.fullmatch(key) for key in keys):
        raise BodyError("logit_bias: keys must be token ids in decimal", "logit_bias")
    _check_ids([int(key) for key in keys], limits, "logit_bias")
    n = request.n or 1
    if n > limits.max_n:
        raise BodyError(f"n: at most {limits.max_n} choices per sequence through this proxy", "n")
    if request.best_of is not None and not n <= request.best_of <= limits.max_n:
        raise BodyError(f"best_of: must be at least n and at most {limits.max_n}", "best_of")
    if request.stream_options is not None and not request.stream:
        raise BodyError("stream_options: only with stream", "stream_options")
    if request.min_tokens is not None and request.min_tokens > (request.max_tokens or DEFAULT_MAX_TOKENS):
        raise BodyError("min_tokens: must be at most max_tokens", "min_tokens")

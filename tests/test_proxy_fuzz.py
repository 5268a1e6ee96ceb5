"""Random request bodies against the proxy, with and without a prompt: whatever arrives, the answer is 200, 400 or
413 (never a 5xx), every refusal is OpenAI's error shape, and the engine only ever sees a body that passes the
schema: no client-sent ``prompt_embeds``, token ids inside the served table, embeddings the proxy built itself."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ctpreg.integrations.openai_body import VLLM_EXTRAS, BodyLimits, validate
from proxy_fakes import VIRTUAL, Engine, decode, proxy_client, tiny_served

MAX_BODY = 16384
OPENAI_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "stop", "seed", "logprobs",
                 "echo", "presence_penalty", "frequency_penalty", "logit_bias", "user", "best_of", "suffix",
                 "stream_options"}
FIELDS = ["model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "stop", "seed", "logprobs", "echo",
          "presence_penalty", "frequency_penalty", "logit_bias", "user", "best_of", "suffix", "stream_options",
          "top_k", "min_p", "repetition_penalty", "min_tokens", "stop_token_ids", "allowed_token_ids", "bad_words",
          "ignore_eos", "prompt_embeds", "include_usage"]


class Raw(str):
    """Text put into the body as it is: literals Python's json takes but JSON does not, escapes, broken syntax."""


class Pairs(list):
    """A JSON object as (key, value) pairs, so a key may repeat."""


RAW = st.sampled_from(["NaN", '"\\ud800"', "[" * 10000, "1e999", "-Infinity", '"a\\udfffb"', "1" * 400, "{", '"\\x"',
                       "01"])
TEXT = st.text(max_size=20)  # lone surrogates come as RAW escapes: Python strings cannot be encoded with them
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.integers(-5, 400)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT | RAW.map(Raw))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5)
                      | st.lists(st.tuples(TEXT, inner), max_size=4).map(Pairs), max_leaves=12)
IDS = st.integers(0, 326)  # the served table has 327 rows
BAD_IDS = st.sampled_from([-1, 327, 2**40])
ID_FIELDS = ["prompt", "stop_token_ids", "allowed_token_ids", "logit_bias"]
SANE = {  # values that mostly pass (limits: 4 sequences, n 3), so that bodies get through to the engine
    "max_tokens": st.integers(1, 20), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
    "n": st.integers(1, 4), "stream": st.booleans(), "seed": st.integers(-(2**63), 2**63 - 1),
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=3),
    "logprobs": st.integers(0, 20), "top_k": st.integers(-1, 50),
    "logit_bias": st.dictionaries(IDS.map(str), st.floats(-100, 100), max_size=3),
    "stop_token_ids": st.lists(IDS, max_size=3), "model": st.text(min_size=1, max_size=10),
}
VALID_PROMPTS = (st.text(min_size=1, max_size=30) | st.lists(IDS, min_size=1, max_size=20)
                 | st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=5)
                 | st.lists(st.lists(IDS, min_size=1, max_size=10), min_size=1, max_size=5))


@st.composite
def bodies(draw) -> bytes:
    """A body as raw bytes: a well-formed request (so that bodies get through and the engine's side is checked),
    most often with one thing broken: a field's value replaced by any value or by a raw literal, a field added or
    repeated; then sometimes not an object at all, padded past the size limit, or nested in brackets."""
    names = draw(st.lists(st.sampled_from(sorted(SANE)), max_size=4, unique=True))
    fields = Pairs([("prompt", draw(VALID_PROMPTS))] + [(name, draw(SANE[name])) for name in names])
    index = draw(st.integers(0, len(fields) - 1))
    change = draw(st.sampled_from(["none", "raw", "value", "none", "id", "add", "repeat", "drop"]))
    if change == "id":  # a token id outside the table, where ids go
        name, bad = draw(st.sampled_from(ID_FIELDS)), draw(BAD_IDS)
        fields = Pairs([item for item in fields if item[0] != name])
        fields.append((name, Pairs([(str(bad), 1)]) if name == "logit_bias" else [bad]))
    elif change == "value":
        fields[index] = (fields[index][0], draw(VALUES))
    elif change == "raw":
        fields[index] = (fields[index][0], Raw(draw(RAW)))
    elif change == "add":
        fields.insert(index, (draw(st.sampled_from(FIELDS) | TEXT), draw(VALUES)))
    elif change == "repeat":
        fields.append((fields[index][0], draw(VALUES)))
    elif change == "drop":
        del fields[index]
    top = draw(st.sampled_from(["object"] * 8 + ["value", "padded", "nested"]))
    if top == "value":
        return render(draw(VALUES)).encode("utf-8", "surrogatepass")
    text = render(fields)
    if top == "padded":
        text += " " * MAX_BODY
    elif top == "nested":
        depth = draw(st.integers(1, 6000))  # past the recursion limit (hypothesis raises it), within the body limit
        text = "[" * depth + text + "]" * depth
    return text.encode("utf-8", "surrogatepass")


def render(value) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{json.dumps(key)}: {render(item)}" for key, item in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render(item) for item in value) + "]"
    if isinstance(value, dict):
        return render(Pairs(value.items()))
    return json.dumps(value)


@pytest.fixture(scope="module")
def proxies():
    """One engine and proxy per mode, kept open for every example."""
    opened = {}
    for mode in ("prompted", "plain"):
        served = tiny_served(prompted=mode == "prompted", max_request_tokens=48)
        engine = Engine()
        http = proxy_client(served, engine, max_body_bytes=MAX_BODY, max_batch=4, max_n=3).__enter__()
        opened[mode] = (served, engine, http)
    yield opened
    for _, _, http in opened.values():
        http.__exit__(None, None, None)


def sequences(prompt) -> int:
    """How many sequences a prompt (or a prompt_embeds field) holds."""
    return len(prompt) if isinstance(prompt, list) and not isinstance(prompt[0], int) else 1


def check_sent(served, sent: dict) -> None:
    """What the engine got: known fields only, plain JSON, token ids inside the table, embeddings only when the
    proxy built them (the served prompt's rows, then table rows), and the schema takes the rest."""
    table = served.builder.table
    embeds = sent.pop("prompt_embeds", None)
    assert (embeds is None) == (served.builder.prompt is None)  # a client's never passes
    assert set(sent) <= OPENAI_FIELDS | set(VLLM_EXTRAS)
    json.dumps(sent, allow_nan=False, ensure_ascii=False).encode()  # finite numbers, no lone surrogates
    ids = [int(key) for key in sent.get("logit_bias") or {}]
    ids += (sent.get("stop_token_ids") or []) + (sent.get("allowed_token_ids") or [])
    prompt = sent.get("prompt")
    for item in prompt if isinstance(prompt, list) else []:
        if not isinstance(item, str):
            ids.extend(item if isinstance(item, list) else [item])
    assert all(0 <= token < table.shape[0] for token in ids)
    assert sequences(prompt if embeds is None else embeds) <= 4 and sent.get("n", 1) <= 3
    limits = BodyLimits(vocab_size=table.shape[0], max_batch=4, max_n=3)
    if embeds is None:
        validate(sent, limits)
        return
    assert "prompt" not in sent and not sent.get("echo")
    validate({**sent, "prompt": "x"}, limits)
    for encoded in embeds if isinstance(embeds, list) else [embeds]:
        rows = decode(encoded)
        assert rows.dtype == table.dtype and rows.shape[1] == table.shape[1] and VIRTUAL < rows.shape[0] <= 48
        assert torch.equal(rows[:VIRTUAL], served.builder.prompt)
        assert bool((rows[VIRTUAL:, None, :] == table[None]).all(-1).any(-1).all())  # each row is a table row


@pytest.mark.parametrize("mode", ["prompted", "plain"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=bodies())
def test_any_body_gets_200_or_a_clean_refusal_and_only_valid_bodies_reach_the_engine(proxies, raw, mode) -> None:
    served, engine, http = proxies[mode]
    before = len(engine.bodies)
    answer = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code in (200, 400, 413), (answer.status_code, answer.text, raw[:300])
    event(f"status {answer.status_code}")  # --hypothesis-show-statistics: how many got through
    if answer.status_code != 200:
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert error["code"] == answer.status_code and isinstance(error["message"], str)
        assert error["param"] is None or isinstance(error["param"], str)
        assert len(engine.bodies) == before
        return
    assert len(engine.bodies) == before + 1
    check_sent(served, dict(engine.bodies[-1]))

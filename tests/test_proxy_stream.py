"""What the proxy answers: the engine's bytes decoded whatever its content-encoding, streamed or not, with ``usage``
counting the client's tokens apart from the prompt's virtual tokens."""

import json

import httpx
import pytest
from fastapi.testclient import TestClient

from ctpreg.integrations.proxy import create_app
from proxy_fakes import VIRTUAL, Engine, proxy_client, tiny_served


@pytest.fixture(scope="module")
def prompted():
    return tiny_served(prompted=True)


@pytest.fixture(scope="module")
def plain():
    return tiny_served(prompted=False)


def events(text: str) -> list:
    """The data of each server-sent event, JSON-decoded except the closing [DONE]."""
    found = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    return [item if item == "[DONE]" else json.loads(item) for item in found]


@pytest.mark.parametrize("gzipped", [False, True])
def test_answers_reach_the_client_decoded_streamed_or_not(prompted, gzipped) -> None:
    engine = Engine()
    engine.gzip = gzipped
    with proxy_client(prompted, engine) as http:
        whole = http.post("/v1/completions", json={"model": "m", "prompt": "hi"})
        assert whole.status_code == 200 and whole.json()["choices"][0]["text"] == "ok"
        assert "content-encoding" not in whole.headers
        with http.stream("POST", "/v1/completions", json={"model": "m", "prompt": "hi", "stream": True}) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            assert answer.headers["cache-control"] == "no-cache"
            assert "content-encoding" not in answer.headers and "content-length" not in answer.headers
            raw = b"".join(answer.iter_raw())  # what came over the wire, not what httpx would decode
    found = events(raw.decode())
    assert [event["choices"][0]["text"] for event in found[:-1]] == ["a", "b"] and found[-1] == "[DONE]"


def test_usage_counts_the_clients_tokens_and_the_virtual_tokens_apart(prompted) -> None:
    engine = Engine()
    with proxy_client(prompted, engine) as http:
        usage = http.post("/v1/completions", json={"model": "m", "prompt": [5, 6, 7]}).json()["usage"]
        assert usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                         "ctpreg_virtual_tokens": VIRTUAL}
        body = {"model": "m", "prompt": [[5, 6], [7, 8, 9]], "n": 2}
        usage = http.post("/v1/completions", json=body).json()["usage"]
        assert usage == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13,
                         "ctpreg_virtual_tokens": 2 * VIRTUAL}
        ids = prompted.builder.token_ids("hello world")
        usage = http.post("/v1/completions", json={"model": "m", "prompt": "hello world"}).json()["usage"]
        assert usage["prompt_tokens"] == len(ids) and usage["ctpreg_virtual_tokens"] == VIRTUAL


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_streams_usage_chunks_are_rewritten_the_same_way(prompted, gzipped) -> None:
    engine = Engine()
    engine.gzip = gzipped
    expected = {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4, "ctpreg_virtual_tokens": VIRTUAL}
    with proxy_client(prompted, engine) as http:
        body = {"model": "m", "prompt": [5, 6], "stream": True, "stream_options": {"include_usage": True}}
        found = events(http.post("/v1/completions", json=body).text)
        assert found[-1] == "[DONE]" and found[-2]["choices"] == [] and found[-2]["usage"] == expected
        assert [event["choices"][0]["text"] for event in found[:-2]] == ["a", "b"]
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        found = events(http.post("/v1/completions", json=body).text)
        assert [event["usage"] for event in found[:-1]] == [expected] * 3
        found = events(http.post("/v1/completions", json={**body, "stream_options": None}).text)
        assert all("usage" not in event for event in found[:-1])


def test_without_a_prompt_usage_is_the_engines(plain) -> None:
    engine = Engine()
    with proxy_client(plain, engine) as http:
        usage = http.post("/v1/completions", json={"model": "m", "prompt": [5, 6, 7]}).json()["usage"]
    assert usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_a_stream_the_engine_breaks_off_ends_with_an_error_event(prompted) -> None:
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield b'data: {"choices": [{"index": 0, "text": "a"}]}\n\n'
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Broken())

    app = create_app(prompted, "http://engine", transport=httpx.MockTransport(handler))
    with TestClient(app) as http:
        answer = http.post("/v1/completions", json={"model": "m", "prompt": "hi", "stream": True})
    first, last = events(answer.text)
    assert first["choices"][0]["text"] == "a"
    assert last["error"]["type"] == "upstream_error" and "broke off" in last["error"]["message"]

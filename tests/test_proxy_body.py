"""The proxy's request checks: every /v1/completions body is parsed strictly and validated field by field before
anything reaches the engine; each refusal is a 400 (413 for size) in OpenAI's error shape naming the field."""

import json

import pytest

from proxy_fakes import PADDED_ROWS, VIRTUAL, Engine, decode, proxy_client, tiny_served

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def prompted():
    return tiny_served(prompted=True, max_request_tokens=40)


@pytest.fixture(scope="module")
def plain():
    return tiny_served(prompted=False, max_request_tokens=40)


def refused(answer, status: int = 400, param: str | None = None) -> str:
    """The answer's error message, once it is checked to be OpenAI's error shape with this status and param."""
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == ERROR_KEYS and error["type"] == "invalid_request_error" and error["code"] == status
    assert error["param"] == param, error
    return error["message"]


RAW_CASES = [  # (raw body, param, words in the message)
    (b'{"prompt": "x", "temperature": NaN}', None, "NaN"),
    (b'{"prompt": "x", "temperature": Infinity}', None, "Infinity"),
    (b'{"prompt": "x", "top_p": -Infinity}', None, "Infinity"),
    (b'{"prompt": "x", "temperature": 1e999}', None, "finite"),
    (b'{"prompt": "x", "prompt": "y"}', "prompt", "duplicate"),
    (b'{"prompt": "\\ud800"}', "prompt", "surrogate"),
    (b'{"prompt": "x", "stop": ["\\udfff"]}', "stop", "surrogate"),
    (b'{"\\ud800": 1, "prompt": "x"}', "\\ud800", "surrogate"),  # named, but never echoed unencodable
    (b'{"prompt": "x", "user": "\xff"}', None, "UTF-8"),
    (b"[" * 100_000, None, "nested deeper than 32"),
    (b'{"prompt": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}", None, "nested deeper than 32"),
    (b'{"prompt": "' + b"[{" * 17 + b'", "max_tokens": 1}', None, None),  # brackets in a string do not nest
    (b"{not json", None, "not JSON"),
    (b'["a list"]', None, "JSON object"),
]


@pytest.mark.parametrize(("raw", "param", "words"), RAW_CASES)
def test_bodies_that_are_not_strict_json_are_refused_before_anything_else(prompted, raw, param, words) -> None:
    engine = Engine()
    with proxy_client(prompted, engine) as http:
        answer = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
        if words is None:
            assert answer.status_code == 200, answer.text
            return
        assert words in refused(answer, param=param)
    assert engine.bodies == []


FIELD_CASES = [  # (fields added to a valid body, param, words in the message)
    ({"prompt": None}, "prompt", "must be a string"),
    ({"prompt": 5}, "prompt", "must be a string"),
    ({"prompt": {"a": 1}}, "prompt", "must be a string"),
    ({"prompt": []}, "prompt", "must not be empty"),
    ({"prompt": [[]]}, "prompt", "must be a string"),
    ({"prompt": [1, "a"]}, "prompt", "must be a string"),
    ({"prompt": [True, 2]}, "prompt", "must be a string"),
    ({"prompt": [1.0]}, "prompt", "must be a string"),
    ({"prompt": [-1]}, "prompt", "token ids"),
    ({"prompt": [[1], [10**30]]}, "prompt", "token ids"),
    ({"prompt_embeds": "AAAA"}, "prompt_embeds", "builds prompt_embeds itself"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"max_tokens": True}, "max_tokens", "integer"),
    ({"max_tokens": "3"}, "max_tokens", "integer"),
    ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
    ({"temperature": "0"}, "temperature", "number"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"n": 0}, "n", "greater than or equal to 1"),
    ({"n": 5}, "n", "at most 4"),
    ({"best_of": 2, "n": 3}, "best_of", "at least n"),
    ({"best_of": 9}, "best_of", "at most 4"),
    ({"logprobs": 21}, "logprobs", "less than or equal to 20"),
    ({"echo": 1}, "echo", "boolean"),
    ({"stream": "yes"}, "stream", "boolean"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "only with stream"),
    ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options", "boolean"),
    ({"stream": True, "stream_options": {"other": True}}, "stream_options", "Extra inputs"),
    ({"stop": 3}, "stop", "string or a list"),
    ({"stop": ["a"] * 17}, "stop", "string or a list"),
    ({"seed": 2**64}, "seed", "less than or equal to"),
    ({"presence_penalty": -3}, "presence_penalty", "greater than or equal to -2"),
    ({"frequency_penalty": 10**400}, "frequency_penalty", "number"),
    ({"logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
    ({"logit_bias": {"100000": 1}}, "logit_bias", "token ids"),
    ({"logit_bias": {"5": 101}}, "logit_bias", "less than or equal to 100"),
    ({"user": "u" * 300}, "user", "at most 256"),
    ({"model": ""}, "model", "at least 1"),
    ({"top_k": -2}, "top_k", "greater than or equal to -1"),
    ({"min_p": 1.5}, "min_p", "less than or equal to 1"),
    ({"repetition_penalty": 0}, "repetition_penalty", "greater than 0"),
    ({"stop_token_ids": [10**6]}, "stop_token_ids", "token ids"),
    ({"allowed_token_ids": []}, "allowed_token_ids", "at least 1"),
    ({"allowed_token_ids": [-4]}, "allowed_token_ids", "token ids"),
    ({"min_tokens": 9, "max_tokens": 3}, "min_tokens", "at most max_tokens"),
    ({"truncate_prompt_tokens": 3}, "truncate_prompt_tokens", "unknown field"),
    ({"guided_json": {}}, "guided_json", "top_k"),  # the refusal lists the extras that are taken
]


@pytest.mark.parametrize(("fields", "param", "words"), FIELD_CASES)
@pytest.mark.parametrize("mode", ["prompted", "plain"])
def test_each_field_has_a_type_and_a_range(prompted, plain, mode, fields, param, words) -> None:
    engine = Engine()
    with proxy_client(prompted if mode == "prompted" else plain, engine, max_n=4) as http:
        answer = http.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 2, **fields})
        assert words in refused(answer, param=param)
    assert engine.bodies == []


def test_openai_fields_and_the_listed_vllm_extras_reach_the_engine(prompted, plain) -> None:
    vocab = prompted.builder.table.shape[0]
    fields = {
        "model": "m", "prompt": [[1, 2], [vocab - 1]], "max_tokens": 3, "temperature": 0, "top_p": 0.5, "n": 2,
        "best_of": 2, "stop": ["\n"], "seed": -5, "logprobs": 2, "presence_penalty": 0.5, "frequency_penalty": -1,
        "logit_bias": {"7": -100, str(vocab - 1): 5.5}, "user": "u", "suffix": None,
        "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "min_tokens": 1, "stop_token_ids": [2],
        "include_stop_str_in_output": False, "ignore_eos": True, "skip_special_tokens": True,
        "spaces_between_special_tokens": True, "allowed_token_ids": [3, 4], "bad_words": ["no"],
        "prompt_logprobs": 1, "return_token_ids": True, "return_tokens_as_token_ids": False,
    }
    for served in (prompted, plain):
        engine = Engine()
        with proxy_client(served, engine) as http:
            assert http.post("/v1/completions", json=fields).status_code == 200
        sent = engine.bodies[-1]
        passed = {key: value for key, value in fields.items() if value is not None}  # null: the default
        if served is prompted:
            assert set(sent) == set(passed) - {"prompt"} | {"prompt_embeds"}
        else:
            assert sent == passed
    assert vocab == len(prompted.builder.tokenizer) + PADDED_ROWS  # the table's rows bound the ids, not the tokenizer


def test_no_prompt_mode_refuses_client_embeds_and_checks_bodies_like_the_prompted_mode(plain) -> None:
    engine = Engine()
    with proxy_client(plain, engine) as http:
        for embeds in ("gASVAAAA", ["AAAA"], None):
            answer = http.post("/v1/completions", json={"model": "m", "prompt": "x", "prompt_embeds": embeds})
            assert "prompt_embeds" in refused(answer, param="prompt_embeds")
        answer = http.post("/v1/completions", json={"model": "m", "prompt_embeds": "AAAA"})
        refused(answer, param="prompt_embeds")
        answer = http.post("/v1/completions", content=b'{"prompt": "x", "temperature": NaN}')
        refused(answer)
        assert engine.bodies == []
        body = {"model": "m", "prompt": "x", "echo": True}  # echo is the engine's to do when it sees the text
        assert http.post("/v1/completions", json=body).status_code == 200 and engine.bodies == [body]


def test_echo_is_refused_where_the_engine_sees_embeddings(prompted) -> None:
    with proxy_client(prompted, Engine()) as http:
        answer = http.post("/v1/completions", json={"model": "m", "prompt": "x", "echo": True})
        assert "echo" in refused(answer, param="echo")


def test_the_position_limit_applies_to_each_sequence_with_its_max_tokens(prompted) -> None:
    """40 positions: 3 virtual + ids + max_tokens (16 when absent) per sequence; the batch and n have own bounds."""
    engine = Engine()
    with proxy_client(prompted, engine, max_batch=4, max_n=2) as http:
        fits = {"model": "m", "prompt": [[7] * 30] * 4, "max_tokens": 7}  # 3 + 30 + 7 = 40 each, 160 in all
        assert http.post("/v1/completions", json=fits).status_code == 200
        assert [decode(e).shape[0] for e in engine.bodies[-1]["prompt_embeds"]] == [VIRTUAL + 30] * 4
        message = refused(http.post("/v1/completions", json={**fits, "max_tokens": 8}), param="prompt")
        assert "41 positions" in message and "40 per sequence" in message
        refused(http.post("/v1/completions", json={"model": "m", "prompt": [7] * 22}), param="prompt")  # 3+22+16
        assert http.post("/v1/completions", json={"model": "m", "prompt": [7] * 21}).status_code == 200
        message = refused(http.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 37}),
                          param="max_tokens")
        assert "no room" in message
        message = refused(http.post("/v1/completions", json={"model": "m", "prompt": ["x"] * 5}), param="prompt")
        assert "5 sequences" in message and "at most 4" in message
        refused(http.post("/v1/completions", json={"model": "m", "prompt": "x", "n": 3}), param="n")
        refused(http.post("/v1/completions", json={"model": "m", "prompt": "y" * 100_000}), param="prompt")
    assert len(engine.bodies) == 2


def test_bodies_over_the_limit_get_413_whether_declared_or_streamed(prompted) -> None:
    engine = Engine()
    with proxy_client(prompted, engine, max_body_bytes=1024) as http:
        body = json.dumps({"model": "m", "prompt": "x" * 2000}).encode()
        assert "over 1024 bytes" in refused(http.post("/v1/completions", content=body), 413)
        chunks = (body[i:i + 100] for i in range(0, len(body), 100))  # no content-length: read until the limit
        refused(http.post("/v1/completions", content=chunks), 413)
    assert engine.bodies == []


def test_unknown_routes_and_methods_answer_in_openai_error_shape(prompted) -> None:
    with proxy_client(prompted, Engine()) as http:
        error = http.get("/v1/nothing").json()["error"]
        assert set(error) == ERROR_KEYS and error["code"] == 404
        answer = http.get("/v1/completions")
        assert answer.status_code == 405 and set(answer.json()["error"]) == ERROR_KEYS

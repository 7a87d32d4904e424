"""Bad input gets a 4xx in OpenAI's error shape with a message that says what is wrong."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import httpx
import openai
import pytest
from harness import MAX_CONCURRENT, MAX_MODEL_LEN, MAX_REQUEST_BYTES, wait_idle

MESSAGES = [{"role": "user", "content": "hello"}]


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_malformed_json_is_a_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        content=b'{"model": "tiny", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    error = error_of(response, 400)
    assert "not valid JSON" in error["message"]
    assert error["type"] == "invalid_request_error"
    not_an_object = http.post("/v1/completions", content=b"[1, 2]")
    assert "JSON object" in error_of(not_an_object, 400)["message"]


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        (
            "/v1/chat/completions",
            rb'{"model": "tiny", "messages": [{"role": "user", '
            rb'"content": "hi \ud800"}], "max_tokens": 2}',
            "messages[0].content",
        ),
        ("/v1/completions", rb'{"model": "tiny", "prompt": "\udfff", "max_tokens": 2}', "prompt"),
        ("/v1/completions", rb'{"model": "tiny", "prompt": "x", "\ud800": 1}', "<key>"),
        # UTF-8-encoded surrogates (0xED 0xA0 0x80): Python's JSON decoder lets them through.
        ("/v1/completions", b'{"model": "tiny", "prompt": "\xed\xa0\x80"}', "prompt"),
    ],
    ids=["chat escape", "completion escape", "in a key", "utf-8 encoded"],
)
def test_a_lone_surrogate_is_a_400_naming_where(
    http: httpx.Client, path: str, body: bytes, where: str
) -> None:
    """JSON admits ``"\ud800"``; Unicode does not, and the tokenizer fails on it."""
    error = error_of(
        http.post(path, content=body, headers={"Content-Type": "application/json"}), 400
    )
    assert error["message"] == (
        f"Request body is not valid Unicode: {where} holds a lone UTF-16 surrogate "
        "(an unpaired \\ud800-\\udfff escape)"
    ), error["message"]
    assert error["code"] == "invalid_json"
    paired = http.post(
        "/v1/completions",
        content=rb'{"model": "tiny", "prompt": "\ud83d\ude00", "max_tokens": 1}',
        headers={"Content-Type": "application/json"},
    )
    assert paired.status_code == 200, paired.text  # a surrogate pair is one character


def test_unknown_model_is_a_400_naming_the_models(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-17", messages=MESSAGES, max_tokens=2)
    assert info.value.status_code == 400
    assert "'gpt-17' does not exist" in info.value.message
    assert "tiny" in info.value.message
    assert "alpha" in info.value.message
    assert info.value.code == "model_not_found"


def test_negative_max_tokens_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=-1)
    assert "'max_tokens' must be at least 1" in info.value.message
    assert info.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=0)


def test_prompt_longer_than_the_context_is_a_400(client: openai.OpenAI) -> None:
    long_prompt = "hello " * (MAX_MODEL_LEN + 100)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": long_prompt}], max_tokens=4
        )
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in info.value.message
    assert info.value.code == "context_length_exceeded"


def test_prompt_plus_max_tokens_beyond_the_context_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="hello", max_tokens=MAX_MODEL_LEN)
    assert "in the completion" in info.value.message


def test_oversized_body_is_a_413(http: httpx.Client) -> None:
    body = b'{"model": "tiny", "prompt": "' + b"a" * (MAX_REQUEST_BYTES + 1) + b'"}'
    error = error_of(http.post("/v1/completions", content=body), 413)
    assert "too large" in error["message"]
    chunked = http.post("/v1/completions", content=iter([body[:1000], body[1000:]]))
    assert chunked.status_code == 413


def test_unknown_route_and_wrong_method_have_the_error_shape(http: httpx.Client) -> None:
    assert error_of(http.get("/v1/nothing"), 404)["type"] == "not_found_error"
    error_of(http.get("/v1/chat/completions"), 405)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"messages": MESSAGES}, "'model' is required"),
        ({"model": "tiny"}, "'messages' must be a non-empty list"),
        ({"model": "tiny", "messages": []}, "'messages' must be a non-empty list"),
        ({"model": "tiny", "messages": ["hi"]}, "messages[0] must be an object"),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "tiny", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"model": "tiny", "messages": MESSAGES, "temperature": "hot"},
            "'temperature' must be a number",
        ),
        ({"model": "tiny", "messages": MESSAGES, "temperature": 9}, "between 0.0 and 2.0"),
        ({"model": "tiny", "messages": MESSAGES, "top_p": 0}, "'top_p'"),
        ({"model": "tiny", "messages": MESSAGES, "max_tokens": 1.5}, "must be an integer"),
        ({"model": "tiny", "messages": MESSAGES, "max_tokens": True}, "must be an integer"),
        ({"model": "tiny", "messages": MESSAGES, "n": 100}, "'n' must be at most"),
        ({"model": "tiny", "messages": MESSAGES, "stop": 3}, "'stop'"),
        ({"model": "tiny", "messages": MESSAGES, "stream": "yes"}, "'stream' must be a boolean"),
        (
            {"model": "tiny", "messages": MESSAGES, "stream_options": {"include_usage": True}},
            "only allowed when 'stream'",
        ),
        ({"model": "tiny", "messages": MESSAGES, "logprobs": True}, "'logprobs' is not supported"),
        ({"model": "tiny", "messages": MESSAGES, "seed": "x"}, "'seed' must be an integer"),
    ],
)
def test_schema_errors_are_400s_that_name_the_field(
    http: httpx.Client, body: dict[str, Any], needle: str
) -> None:
    assert needle in error_of(http.post("/v1/chat/completions", json=body), 400)["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "tiny"},
        {"model": "tiny", "prompt": []},
        {"model": "tiny", "prompt": [[]]},
        {"model": "tiny", "prompt": [1, "a"]},
        {"model": "tiny", "prompt": [10**9]},
        {"model": "tiny", "prompt": [-1]},
        {"model": "tiny", "prompt": "x", "best_of": 3},
        {"model": "tiny", "prompt": "x", "suffix": "y"},
        {"model": "tiny", "prompt": ["a"] * 20},
    ],
)
def test_bad_completion_prompts_are_400s(http: httpx.Client, body: dict[str, Any]) -> None:
    error_of(http.post("/v1/completions", json=body), 400)


def test_no_input_produces_a_5xx(http: httpx.Client) -> None:
    """A spread of odd bodies on every generation route: always answered, never with 5xx."""
    bodies: list[bytes] = [
        b"",
        b"null",
        b"\xff\xfe",
        b'{"model": null}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1e309}',
        b'{"model": "tiny", "prompt": "x", "max_tokens": -5, "n": -1}',
        b'{"model": "alpha", "prompt": {"a": 1}}',
        b'{"prompt": 12, "generate_kwargs": []}',
        b'{"prompt": "x", "generate_kwargs": {"max_new_tokens": "many"}}',
        b'{"messages": "x"}',
    ]
    for route in ("/v1/chat/completions", "/v1/completions", "/chat"):
        for body in bodies:
            response = http.post(route, content=body)
            assert response.status_code < 500, (route, body, response.text)
            if route != "/chat":  # /chat ignores OpenAI fields, so some bodies are fine there
                assert response.status_code >= 400, (route, body, response.text)
            if response.status_code >= 400:
                assert "error" in response.json()


def test_requests_beyond_the_admission_limit_get_429(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    streams = []
    try:
        for _ in range(MAX_CONCURRENT):
            streams.append(
                client.chat.completions.create(
                    model="tiny", messages=MESSAGES, max_tokens=1500, temperature=0, stream=True
                )
            )
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
        assert info.value.status_code == 429
        assert "Too many requests" in info.value.message
    finally:
        for stream in streams:
            stream.close()
    wait_idle(http)
    client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)


# -- what the fuzzer (test_fuzz_requests.py) found: each was a 5xx, a reset or a hang ----


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {"model": "tiny", "prompt": "x", "seed": 2**63}, "seed"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "seed": 2**64}, "seed"),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": MESSAGES, "seed": -(2**63) - 1},
            "seed",
        ),
        ("/chat", {"prompt": "x", "generate_kwargs": {"seed": 10**30}}, "generate_kwargs.seed"),
    ],
    ids=["2**63", "2**64", "below -2**63", "quick start"],
)
def test_a_seed_beyond_64_bits_is_a_400(
    http: httpx.Client, path: str, body: dict[str, Any], field: str
) -> None:
    """torch and vLLM's serializer fail on such seeds: it was a 500 on both engines."""
    error = error_of(http.post(path, json={**body, "max_tokens": 1}), 400)
    assert error["param"] == field
    assert error["message"].startswith(f"'{field}' must be between -9223372036854775808 and "), (
        error["message"]
    )


def test_the_largest_seed_with_n_samples_stays_within_64_bits(http: httpx.Client) -> None:
    """Sample i is seeded with seed + i, folded back into 64 bits."""
    body = {"model": "tiny", "prompt": "x", "seed": 2**63 - 1, "n": 3, "max_tokens": 2}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 3


@pytest.mark.parametrize("top_k", [4096, 2**31, 2**63, 2**64 - 1, 10**30])
def test_a_top_k_beyond_the_vocabulary_filters_nothing(http: httpx.Client, top_k: int) -> None:
    """vLLM's worker overflowed on it (500); it now means no top-k, as vLLM's own server."""
    body = {"model": "tiny", "prompt": "x", "max_tokens": 2, "temperature": 0}
    greedy = http.post("/v1/completions", json=body)
    response = http.post("/v1/completions", json={**body, "top_k": top_k, "temperature": 0.0})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
    quick = http.post(
        "/chat", json={"prompt": "x", "generate_kwargs": {"max_new_tokens": 1, "top_k": top_k}}
    )
    assert quick.status_code == 200, quick.text


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-45, 9.9e-6])
def test_a_temperature_next_to_zero_is_greedy(http: httpx.Client, temperature: float) -> None:
    """transformers divided the logits by it into NaN probabilities (500)."""
    body = {"model": "tiny", "prompt": "x", "max_tokens": 3, "temperature": 0}
    greedy = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    response = http.post("/v1/completions", json={**body, "temperature": temperature})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == greedy


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {"model": "tiny", "prompt": ""}, "prompt"),
        ("/v1/completions", {"model": "tiny", "prompt": ["x", ""]}, "prompt"),
        ("/chat", {"prompt": ""}, "prompt"),
    ],
)
def test_an_empty_prompt_is_a_400(
    http: httpx.Client, path: str, body: dict[str, Any], field: str
) -> None:
    """No token to continue: transformers failed (500), vLLM answered without a param."""
    error = error_of(http.post(path, json={**body, "max_tokens": 1}), 400)
    assert error["message"] == f"'{field}' is empty: the prompt has no tokens to continue"
    assert error["param"] == field


DEEP = "Request body is not valid JSON: arrays and objects are nested too deeply"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 50_000, DEEP),
        (b'{"a":' * 10_000, DEEP),
        (  # near the decoder's limit, and the surrogate check walks as deep: a 400 either way
            b'{"model": "tiny", "a": ' + b"[" * 960 + b'"\\ud800"' + b"]" * 960 + b"}",
            None,
        ),
        (
            b'{"model": "tiny", "prompt": "x", "seed": ' + b"9" * 5000 + b"}",
            "Request body is not valid JSON: a number has more than 4300 digits",
        ),
    ],
    ids=["arrays", "objects", "surrogate walk", "digits"],
)
def test_json_the_decoder_refuses_is_a_400(
    http: httpx.Client, body: bytes, message: str | None
) -> None:
    """RecursionError and Python's integer digit limit escaped as 500s."""
    error = error_of(http.post("/v1/completions", content=body), 400)
    assert error["code"] == "invalid_json"
    if message is not None:
        assert error["message"] == message


def test_a_utf16_body_with_a_lone_surrogate_is_a_400(http: httpx.Client) -> None:
    """json.loads reads UTF-16; the surrogate check only looked for UTF-8 bytes (500)."""
    body = '{"model": "tiny", "prompt": "\\ud800", "max_tokens": 1}'.encode("utf-16")
    error = error_of(http.post("/v1/completions", content=body), 400)
    assert "prompt holds a lone UTF-16 surrogate" in error["message"]
    fine = '{"model": "tiny", "prompt": "x", "max_tokens": 1}'.encode("utf-16")
    assert http.post("/v1/completions", content=fine).status_code == 200


def test_compressed_bodies_are_decoded_and_bad_ones_are_4xx(http: httpx.Client) -> None:
    """aiohttp's own decoding answered corrupt data with a 500 and a dropped keep-alive
    connection, and raw-deflate garbage with a request that never ended."""
    body = json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 1}).encode()
    for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        headers = {"Content-Encoding": encoding}
        response = http.post("/v1/completions", content=data, headers=headers)
        assert response.status_code == 200, response.text
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    data = raw_deflate.compress(body) + raw_deflate.flush()
    response = http.post("/v1/completions", content=data, headers={"Content-Encoding": "deflate"})
    assert response.status_code == 200, response.text
    cases = [
        ("gzip", b"not gzip", 400, "Request body is not valid gzip data (Content-Encoding): "),
        ("deflate", b"{}", 400, "Request body is not valid deflate data (Content-Encoding): "),
        ("gzip", gzip.compress(body)[:-8], 400, "the stream is truncated"),
        ("gzip", gzip.compress(b" " * (MAX_REQUEST_BYTES + 1)), 413, "inflates beyond the limit"),
        ("br", body, 415, "Content-Encoding 'br' is not supported; use one of gzip"),
    ]
    for encoding, data, status, needle in cases:
        response = http.post(
            "/v1/completions", content=data, headers={"Content-Encoding": encoding}, timeout=10
        )
        assert needle in error_of(response, status)["message"], (encoding, data)
    # The same keep-alive connection still serves.
    assert http.post("/v1/completions", content=body).status_code == 200


def test_errors_about_the_prompt_name_it(http: httpx.Client) -> None:
    vocabulary = error_of(
        http.post("/v1/completions", json={"model": "tiny", "prompt": [10**6]}), 400
    )
    assert vocabulary["message"].startswith("'prompt' holds token id 1000000, outside")
    too_long = {"model": "tiny", "prompt": "hello " * MAX_MODEL_LEN, "max_tokens": 1}
    assert error_of(http.post("/v1/completions", json=too_long), 400)["param"] == "prompt"
    beyond = {"model": "tiny", "prompt": "x", "max_completion_tokens": MAX_MODEL_LEN}
    error = error_of(http.post("/v1/completions", json=beyond), 400)
    assert error["param"] == "max_completion_tokens"
    quick = {"prompt": "x", "generate_kwargs": {"max_length": MAX_MODEL_LEN + 5}}
    assert error_of(http.post("/chat", json=quick), 400)["param"] == "generate_kwargs.max_length"

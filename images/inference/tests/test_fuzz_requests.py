"""Property-based fuzzing of request bodies: nothing a client sends gets a 5xx.

hypothesis builds bodies for every POST route on each engine: arbitrary JSON values,
requests of the real shape with fields replaced by wrong types or out-of-range values,
and raw bytes (not JSON, not UTF-8, truncated, nested too deep, numbers too long), sent
with assorted Content-Types and Content-Encodings. The property: the status is below
500; an error has the server's error shape and names the field it is about; a success
is a well-formed completion (JSON or server-sent events without an error event); and
the server is healthy and idle after the run.

The run is bounded and reproducible (derandomized, a fixed number of examples, valid
bodies generate at most a few tokens). A longer or differently seeded run, to hunt for
bugs locally:

    KAITO_FUZZ_EXAMPLES=3000 KAITO_FUZZ_SEED=7 make test-inference
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from harness import MAX_MODEL_LEN, MAX_REQUEST_BYTES, ServerProcess, wait_idle
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("KAITO_FUZZ_EXAMPLES") or 0)
"""Examples per test instead of each test's default (0: the defaults)."""
FUZZ_SEED = os.environ.get("KAITO_FUZZ_SEED")
"""A seed for a run that explores other bodies than CI's (default: derandomized)."""

ROUTES = ("/v1/chat/completions", "/v1/completions", "/chat")
MODELS = ("tiny", "alpha", "beta", "alpha_muted")
ROLES = ("system", "developer", "user", "assistant", "tool")
# Fields that bound generation: a valid value above SMALL_TOKENS is replaced, so that
# a valid body costs a few tokens (the property is about validation, not throughput).
LENGTH_FIELDS = ("max_tokens", "max_completion_tokens", "max_new_tokens", "max_length")
SMALL_TOKENS = 3


def fuzz_settings(default_examples: int) -> Callable[[Any], Any]:
    chosen = settings(
        max_examples=FUZZ_EXAMPLES or default_examples,
        deadline=None,
        derandomize=FUZZ_SEED is None,
        database=None,
        print_blob=False,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    if FUZZ_SEED is None:
        return chosen
    reseeded = seed(int(FUZZ_SEED))
    return lambda f: reseeded(chosen(f))


# -- values ------------------------------------------------------------------------------

_SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_CONTROLS = st.characters(max_codepoint=0x1F) | st.sampled_from("\x7f\u2028\u2029\ufeff\ufffe")
texts = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(exclude_categories=()), max_size=20),  # lone surrogates too
    st.text(_CONTROLS, max_size=8),
    st.lists(st.text(max_size=3) | _SURROGATES, max_size=4).map("".join),
    st.sampled_from(["", " ", "tiny", "alpha", "null", "{}", "\\u0000", "\x00", "\ud800"]),
    st.integers(1_000, MAX_REQUEST_BYTES + 2_000).map(lambda n: "a" * n),  # long, or 413
)
big_ints = st.sampled_from(
    [2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30]
).flatmap(lambda n: st.sampled_from([n, -n, n + 1, -n - 1]))
numbers = st.one_of(
    st.integers(-5, 5),
    st.integers(),
    big_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e-45, 1e-9, 0.5, 1.5, 2.0000001, 1e308]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


def _part() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
        st.fixed_dictionaries({"type": texts | json_values, "text": json_values}),
        json_values,
    )


messages = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"role": st.sampled_from(ROLES), "content": texts | st.lists(_part(), max_size=3)}
        ),
        st.fixed_dictionaries(
            {"role": st.sampled_from(ROLES) | json_values, "content": json_values},
            optional={"name": json_values, "tool_calls": json_values},
        ),
        json_values,
    ),
    max_size=4,
)
token_ids = st.lists(st.integers(-3, 600) | big_ints | numbers, max_size=6)
prompts = st.one_of(
    texts,
    st.lists(texts, max_size=18),
    token_ids,
    st.lists(token_ids, max_size=3),
    json_values,
)


def _field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: a valid one (to reach deeper code) or anything at all."""
    return st.one_of(valid, numbers, json_values)


SAMPLING_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": _field(st.sampled_from(MODELS)),
    "max_tokens": _field(st.integers(1, SMALL_TOKENS)),
    "max_completion_tokens": _field(st.integers(1, SMALL_TOKENS)),
    "temperature": _field(st.floats(0, 2)),
    "top_p": _field(st.floats(1e-9, 1)),
    "top_k": _field(st.integers(-1, 1000)),
    "repetition_penalty": _field(st.floats(0.01, 10)),
    "stop": _field(st.lists(texts, max_size=9) | texts),
    "seed": _field(st.integers(-(2**63), 2**63 - 1)),
    "n": _field(st.integers(1, 4)),
    "stream": _field(st.booleans()),
    "stream_options": _field(st.fixed_dictionaries({"include_usage": json_values})),
    "ignore_eos": _field(st.booleans()),
    "logprobs": _field(st.booleans()),
    "logit_bias": json_values,
    "user": json_values,
    "presence_penalty": numbers,
    "unknown_field": json_values,
}
ROUTE_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "/v1/chat/completions": {
        **SAMPLING_FIELDS,
        "messages": messages | json_values,
        "top_logprobs": json_values,
        "tools": json_values,
        "functions": json_values,
    },
    "/v1/completions": {
        **SAMPLING_FIELDS,
        "prompt": prompts,
        "echo": _field(st.booleans()),
        "suffix": json_values,
        "best_of": _field(st.integers(0, 2)),
    },
    "/chat": {
        "prompt": prompts,
        "messages": messages | json_values,
        "model": _field(st.sampled_from(MODELS)),
        "return_full_text": _field(st.booleans()),
        "generate_kwargs": json_values,
    },
}
GENERATE_KWARGS: dict[str, st.SearchStrategy[Any]] = {
    "max_new_tokens": _field(st.integers(1, SMALL_TOKENS)),
    "max_length": _field(st.integers(1, 40)),
    "do_sample": _field(st.booleans()),
    "seed": _field(st.integers(-(2**63), 2**63 - 1)),
    "top_k": _field(st.integers(0, 100)),
    "top_p": _field(st.floats(1e-9, 1)),
    "temperature": _field(st.floats(0, 2)),
    "repetition_penalty": _field(st.floats(0.01, 10)),
}
BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    },
    "/v1/completions": {"model": "tiny", "prompt": "hi", "max_tokens": 2},
    "/chat": {"prompt": "hi", "generate_kwargs": {"max_new_tokens": 2}},
}


def _bounded(body: Any) -> Any:
    """`body` with every valid length field that would generate many tokens made small."""
    if not isinstance(body, dict):
        return body
    out = {k: _bounded(v) if k == "generate_kwargs" else v for k, v in body.items()}
    for key in LENGTH_FIELDS:
        value = out.get(key)
        if type(value) is int and SMALL_TOKENS < value < MAX_MODEL_LEN:
            out[key] = SMALL_TOKENS if key != "max_length" else 40
    return out


@st.composite
def shaped(draw: st.DrawFn, route: str) -> Any:
    """A request of `route`'s shape with one to four fields replaced, added or removed."""
    body = json.loads(json.dumps(BASES[route]))
    fields = ROUTE_FIELDS[route]
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(sorted(fields)))
        if draw(st.integers(0, 9)) == 0 and key not in LENGTH_FIELDS:
            body.pop(key, None)
        else:
            body[key] = draw(fields[key])
    if route == "/chat" and draw(st.booleans()):
        kwargs = body["generate_kwargs"] = {"max_new_tokens": 2}
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(sorted(GENERATE_KWARGS)))
            kwargs[key] = draw(GENERATE_KWARGS[key])
    return _bounded(body)


# -- bodies on the wire ------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    route: str
    body: bytes
    headers: dict[str, str]

    def __repr__(self) -> str:  # hypothesis prints the falsifying example with this
        shown = self.body if len(self.body) <= 600 else self.body[:600] + b"..."
        return f"Case({self.route!r}, {shown!r}, {self.headers!r})"


def _encode(value: Any, ensure_ascii: bool, codec: str = "utf-8") -> bytes:
    # surrogatepass: a lone surrogate unescaped is sent as its UTF-8-style bytes.
    return json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=True).encode(
        codec, "surrogatepass"
    )


CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "",
        "not a content type",
    ]
)


# Mostly none: a body rejected for its encoding never reaches the fields.
ENCODINGS = st.sampled_from(
    [None] * 24 + ["identity", "gzip", "x-gzip", "deflate", "gzip, deflate", "br", "zstd", "?"]
)


@st.composite
def on_the_wire(draw: st.DrawFn, route: str, value: Any) -> Case:
    codec = draw(st.sampled_from(["utf-8"] * 6 + ["utf-16", "utf-32-be"]))
    body = _encode(value, draw(st.booleans()), codec)
    headers: dict[str, str] = {}
    content_type = draw(CONTENT_TYPES)
    if content_type is not None:
        headers["Content-Type"] = content_type
    encoding = draw(ENCODINGS)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
        if draw(st.integers(0, 3)):  # else sent as is: not what the header says
            for step in (e.strip() for e in encoding.split(",")):
                if step in ("gzip", "x-gzip"):
                    body = gzip.compress(body)
                elif step == "deflate":
                    body = zlib.compress(body)
            if not draw(st.integers(0, 3)):
                body = body[: draw(st.integers(1, len(body)))]  # truncated
    return Case(route, body, headers)


def raw_bytes(route: str) -> st.SearchStrategy[bytes]:
    valid = _encode(BASES[route], True)
    return st.one_of(
        st.binary(max_size=64),
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),  # truncated
        st.tuples(st.integers(0, len(valid)), st.binary(min_size=1, max_size=4)).map(
            lambda t: valid[: t[0]] + t[1] + valid[t[0] :]  # bytes spliced in
        ),
        st.sampled_from([b"[", b'{"a":', b'{"model":[']).flatmap(
            lambda opener: st.integers(100, 40_000).map(lambda n: opener * n)  # deep
        ),
        st.integers(4_000, 20_000).map(
            lambda n: valid[:-1] + b', "seed": ' + b"9" * n + b"}"  # a number too long
        ),
        st.sampled_from([b"NaN", b"-Infinity", b"1e999", b"\xef\xbb\xbf" + valid]),
        st.sampled_from(["utf-16", "utf-32", "latin-1"]).map(
            lambda codec: json.dumps(BASES[route]).encode(codec)
        ),
    )


def cases(route: str) -> st.SearchStrategy[Case]:
    return st.one_of(
        shaped(route).flatmap(lambda v: on_the_wire(route, v)),
        shaped(route).flatmap(lambda v: on_the_wire(route, v)),
        shaped(route).flatmap(lambda v: on_the_wire(route, v)),
        json_values.flatmap(lambda v: on_the_wire(route, v)),
        st.tuples(raw_bytes(route), CONTENT_TYPES).map(
            lambda t: Case(route, t[0], {} if t[1] is None else {"Content-Type": t[1]})
        ),
    )


# -- the property ------------------------------------------------------------------------


def check(http: httpx.Client, case: Case) -> None:
    response = http.post(case.route, content=case.body, headers=case.headers)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        check_error(response)
    elif response.headers["content-type"].startswith("text/event-stream"):
        check_events(response)
    else:
        check_result(case.route, response.json())


def check_error(response: httpx.Response) -> None:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    message, param = error["message"], error["param"]
    assert isinstance(message, str), error
    assert message, error
    assert error["type"].endswith("_error"), error
    if param is not None and error["code"] != "context_length_exceeded":
        # The field is named: `messages[0].role` as is, `generate_kwargs.seed` or `seed`.
        name = param.rsplit(".", 1)[-1].split("[", 1)[0]
        assert param in message or name in message, error


def check_result(route: str, body: dict[str, Any]) -> None:
    if route == "/chat":
        assert set(body) == {"Result"}, body
        assert isinstance(body["Result"], str), body
        return
    assert body["object"] == ("chat.completion" if "chat" in route else "text_completion")
    assert body["choices"], body
    for choice in body["choices"]:
        text = choice["message"]["content"] if "chat" in route else choice["text"]
        assert isinstance(text, str), choice
        assert choice["finish_reason"] in ("stop", "length"), choice
    assert body["usage"]["total_tokens"] >= body["usage"]["completion_tokens"], body


def check_events(response: httpx.Response) -> None:
    events = [e for e in response.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]", response.text
    for event in events[:-1]:
        assert event.startswith("data: "), event
        chunk = json.loads(event[len("data: ") :])
        assert "error" not in chunk, chunk
        assert chunk["object"] in ("chat.completion.chunk", "text_completion"), chunk


def assert_healthy(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    wait_idle(http)
    ok = http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
    assert ok.status_code == 200, ok.text


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_no_body_gets_a_5xx(server: ServerProcess, route: str) -> None:
    # A hang fails as a timeout: a valid body generates at most 200 tokens (/chat's default).
    with httpx.Client(base_url=server.base_url, timeout=30.0) as http:

        @fuzz_settings(200)
        @given(case=cases(route))
        def fuzz(case: Case) -> None:
            check(http, case)

        fuzz()
        assert_healthy(http)

"""OpenAI request parsing and validation, and the OpenAI error shape.

Parsing is explicit rather than schema-driven: the server must answer every malformed
body with a 400 that names the offending field, and the hot path must stay cheap. Fields
the server does not implement (`logprobs`, `tools`, beam search...) are rejected with a
400 rather than silently ignored when they would change the answer; fields that are only
hints (`user`, `presence_penalty` of 0...) are accepted and ignored.
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from dataclasses import dataclass
from typing import Any

from .engines.base import SamplingOptions

MAX_N = 16
MAX_STOP_SEQUENCES = 8


class RequestError(Exception):
    """A client error, answered with the OpenAI error shape and `status`."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.type = type_ or _ERROR_TYPES.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type_=self.type, param=self.param, code=self.code)


_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable_error",
}


def error_body(
    message: str, *, type_: str, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """Sampling fields shared by chat and text completions, validated."""

    max_tokens: int | None
    max_tokens_field: str  # the field that gave max_tokens, for error messages
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    stop: tuple[str, ...]
    seed: int | None
    n: int
    ignore_eos: bool


@dataclass(frozen=True, kw_only=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    sampling: Sampling
    stream: bool
    include_usage: bool


@dataclass(frozen=True, kw_only=True)
class CompletionRequest:
    model: str
    prompts: list[str | list[int]]
    sampling: Sampling
    stream: bool
    include_usage: bool
    echo: bool


CONTENT_ENCODINGS = ("gzip", "x-gzip", "deflate", "identity")


def decode_body(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body without its Content-Encoding (gzip, deflate), at most `limit` bytes.

    The server decodes bodies itself rather than leaving it to aiohttp, whose decoder
    answers a corrupt stream with a 500, a dropped connection or a request that never
    ends; here a corrupt stream is a 400, an unknown encoding a 415, and a body that
    inflates beyond the limit a 413.
    """
    if not content_encoding:
        return raw
    # "gzip, deflate": applied in that order, so undone in reverse.
    for encoding in reversed([e.strip().lower() for e in content_encoding.split(",")]):
        if encoding == "identity":
            continue
        if encoding not in CONTENT_ENCODINGS:
            raise RequestError(
                f"Content-Encoding {encoding!r} is not supported; use one of "
                f"{', '.join(CONTENT_ENCODINGS)}",
                status=415,
                code="unsupported_content_encoding",
            )
        raw = _inflate(raw, encoding, limit)
    return raw


def _inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    if encoding == "deflate":
        # RFC 9110's deflate is zlib-wrapped; some clients send raw deflate data.
        wbits = zlib.MAX_WBITS if raw[:1] and raw[0] & 0x0F == 8 else -zlib.MAX_WBITS
    else:
        wbits = zlib.MAX_WBITS | 16
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise RequestError(
            f"Request body is not valid {encoding} data (Content-Encoding): {exc}",
            code="invalid_content_encoding",
        ) from exc
    if len(data) > limit:
        raise RequestError(
            f"Request body too large: it inflates beyond the limit of {limit} bytes",
            status=413,
        )
    if not inflater.eof or inflater.unused_data:
        raise RequestError(
            f"Request body is not valid {encoding} data (Content-Encoding): the stream is "
            + ("truncated" if not inflater.eof else "followed by extra bytes"),
            code="invalid_content_encoding",
        )
    return data


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying why it is not one."""
    try:
        body = json.loads(raw)
        where = (
            _surrogate_path(body, "")
            if isinstance(body, dict) and _may_hold_surrogate(raw)
            else None
        )
    except RecursionError as exc:
        raise RequestError(
            "Request body is not valid JSON: arrays and objects are nested too deeply",
            code="invalid_json",
        ) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"Request body is not valid JSON: {exc}", code="invalid_json") from exc
    except ValueError as exc:  # Python refuses to convert integers this long
        raise RequestError(
            "Request body is not valid JSON: a number has more than "
            f"{sys.get_int_max_str_digits()} digits",
            code="invalid_json",
        ) from exc
    if not isinstance(body, dict):
        raise RequestError("Request body must be a JSON object", code="invalid_json")
    if where is not None:
        raise RequestError(
            f"Request body is not valid Unicode: {where} holds a lone UTF-16 "
            "surrogate (an unpaired \\ud800-\\udfff escape)",
            code="invalid_json",
            param=where.split("[", 1)[0].split(".", 1)[0] or None,
        )
    return body


def _may_hold_surrogate(raw: bytes) -> bool:
    # JSON admits "\ud800" (and Python's decoder lets UTF-8-encoded surrogates through),
    # but a lone surrogate is no Unicode text: the tokenizer and every encoder fail on
    # it later. Only bodies that can hold one (an escape, or the 0xED lead byte) are
    # walked, and bodies in UTF-16 or UTF-32 (json.loads detects them), where neither
    # shows as those bytes.
    return b"\\u" in raw or b"\xed" in raw or json.detect_encoding(raw) != "utf-8"


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def _surrogate_path(value: object, path: str) -> str | None:
    """Where in ``value`` the first lone surrogate is (``messages[0].content``)."""
    if isinstance(value, str):
        return path if _has_surrogate(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _has_surrogate(key):
                return f"{path}.<key>" if path else "<key>"
            found = _surrogate_path(item, f"{path}.{key}" if path else key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _surrogate_path(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def int_field(body: dict[str, Any], key: str, *, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_int(value):
        raise RequestError(f"'{key}' must be an integer, got {value!r}", param=key)
    if value < minimum:
        raise RequestError(f"'{key}' must be at least {minimum}, got {value}", param=key)
    return int(value)


SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # a 64-bit signed integer, as OpenAI and vLLM


def seed_field(body: dict[str, Any], key: str, *, name: str | None = None) -> int | None:
    """An optional seed: an integer that fits 64 bits (engines fail on larger ones)."""
    value = body.get(key)
    name = name or key
    if value is None:
        return None
    if not _is_int(value):
        raise RequestError(f"'{name}' must be an integer, got {value!r}", param=name)
    if not SEED_MIN <= value <= SEED_MAX:
        raise RequestError(
            f"'{name}' must be between {SEED_MIN} and {SEED_MAX} (64 bits), got {value}",
            param=name,
        )
    return int(value)


def number_field(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not _is_number(value):
        raise RequestError(f"'{key}' must be a number, got {value!r}", param=key)
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be between {low} and {high}, got {value}", param=key)
    return float(value)


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be a boolean, got {value!r}", param=key)
    return value


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is required and must be a non-empty string", param="model")
    return model


def _reject_unsupported(body: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        value = body.get(key)
        if value not in (None, False, 0, [], {}):
            raise RequestError(f"'{key}' is not supported by this server", param=key)


def _top_k(body: dict[str, Any]) -> int:
    # vLLM accepts -1 for "no top-k" as well as 0.
    if body.get("top_k") == -1:
        return 0
    return int_field(body, "top_k", minimum=0) or 0


def parse_sampling(body: dict[str, Any]) -> Sampling:
    max_tokens_field = "max_completion_tokens"
    max_tokens = int_field(body, max_tokens_field, minimum=1)
    if max_tokens is None:
        max_tokens_field = "max_tokens"
        max_tokens = int_field(body, max_tokens_field, minimum=1)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if len(stop) > MAX_STOP_SEQUENCES:
            raise RequestError(
                f"'stop' accepts at most {MAX_STOP_SEQUENCES} sequences", param="stop"
            )
        stops = tuple(s for s in stop if s)
    else:
        raise RequestError("'stop' must be a string or a list of strings", param="stop")
    seed = seed_field(body, "seed")
    n = int_field(body, "n", minimum=1) or 1
    if n > MAX_N:
        raise RequestError(f"'n' must be at most {MAX_N}, got {n}", param="n")
    return Sampling(
        max_tokens=max_tokens,
        max_tokens_field=max_tokens_field,
        temperature=number_field(body, "temperature", 1.0, 0.0, 2.0),
        top_p=number_field(body, "top_p", 1.0, 1e-9, 1.0),
        top_k=_top_k(body),
        repetition_penalty=number_field(body, "repetition_penalty", 1.0, 0.01, 10.0),
        stop=stops,
        seed=seed,
        n=n,
        ignore_eos=_bool(body, "ignore_eos"),
    )


def _stream_options(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    if not stream:
        raise RequestError(
            "'stream_options' is only allowed when 'stream' is true", param="stream_options"
        )
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise RequestError(
            "'stream_options.include_usage' must be a boolean", param="stream_options"
        )
    return include


def _message_content(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestError(
                    f"messages[{index}].content: only text parts are supported",
                    param=f"messages[{index}].content",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(
                    f"messages[{index}].content: a text part needs a string 'text'",
                    param=f"messages[{index}].content",
                )
            parts.append(text)
        return "".join(parts)
    raise RequestError(
        f"messages[{index}].content must be a string or a list of text parts",
        param=f"messages[{index}].content",
    )


def parse_messages(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RequestError(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise RequestError(
                f"messages[{i}].role must be one of system, user, assistant, tool; got {role!r}",
                param=f"messages[{i}].role",
            )
        messages.append({"role": role, "content": _message_content(message, i)})
    return messages


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    _reject_unsupported(body, ("logprobs", "top_logprobs", "tools", "functions", "logit_bias"))
    model = _model(body)
    messages = parse_messages(body.get("messages"))
    stream = _bool(body, "stream")
    return ChatRequest(
        model=model,
        messages=messages,
        sampling=parse_sampling(body),
        stream=stream,
        include_usage=_stream_options(body, stream),
    )


def parse_completion_request(body: dict[str, Any]) -> CompletionRequest:
    _reject_unsupported(body, ("logprobs", "suffix", "logit_bias"))
    if body.get("best_of") not in (None, 1):
        raise RequestError("'best_of' is not supported by this server", param="best_of")
    model = _model(body)
    prompt = body.get("prompt")
    prompts: list[str | list[int]]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        prompts = [list(prompt)]
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt)
    ):
        prompts = [list(p) for p in prompt]
    else:
        raise RequestError(
            "'prompt' must be a string, a list of strings, or token ids", param="prompt"
        )
    stream = _bool(body, "stream")
    sampling = parse_sampling(body)
    if len(prompts) * sampling.n > MAX_N:
        raise RequestError(
            f"len(prompt) * n must be at most {MAX_N}, got {len(prompts) * sampling.n}",
            param="prompt",
        )
    return CompletionRequest(
        model=model,
        prompts=prompts,
        sampling=sampling,
        stream=stream,
        include_usage=_stream_options(body, stream),
        echo=_bool(body, "echo"),
    )


QUICKSTART_DEFAULT_MAX_LENGTH = 200  # Kaito's /chat default (prompt + generated tokens)


def parse_quickstart_options(kwargs: dict[str, Any], prompt_len: int) -> SamplingOptions:
    """Map Kaito's `generate_kwargs` (transformers names) onto sampling options."""
    max_new = int_field(kwargs, "max_new_tokens", minimum=1)
    if max_new is None:
        max_length = int_field(kwargs, "max_length", minimum=1)
        max_length = QUICKSTART_DEFAULT_MAX_LENGTH if max_length is None else max_length
        max_new = max(1, max_length - prompt_len)
    do_sample = kwargs.get("do_sample", True)
    if not isinstance(do_sample, bool):
        raise RequestError("'generate_kwargs.do_sample' must be a boolean", param="do_sample")
    seed = seed_field(kwargs, "seed", name="generate_kwargs.seed")
    top_k = int_field(kwargs, "top_k", minimum=0)
    return SamplingOptions(
        max_tokens=max_new,
        temperature=number_field(kwargs, "temperature", 1.0, 0.0, 2.0) if do_sample else 0.0,
        top_p=number_field(kwargs, "top_p", 1.0, 1e-9, 1.0),
        top_k=10 if top_k is None else top_k,  # Kaito's default
        repetition_penalty=number_field(kwargs, "repetition_penalty", 1.0, 0.01, 10.0),
        seed=seed,
    )

"""Probes, metrics and the end of a request: client disconnects abort generation."""

from __future__ import annotations

import socket
import time

import httpx
import openai
import pytest
from harness import ServerProcess, metric_value, metrics_text, wait_idle

LONG = 1500  # tokens: several seconds of generation on one CPU thread


def test_health_is_503_while_loading_then_200(server: ServerProcess, http: httpx.Client) -> None:
    assert server.health_seen[0] == (503, "loading"), server.health_seen
    assert server.health_seen[-1] == (200, "ok")
    for path in ("/health", "/healthz"):
        response = http.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


def test_metrics_expose_engine_and_server_metrics(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    before = metrics_text(http)
    client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
    )
    text = metrics_text(http)
    route = {"route": "/v1/chat/completions", "method": "POST", "code": "200"}
    assert metric_value(text, "kaito_inference_requests_total", **route) == (
        metric_value(before, "kaito_inference_requests_total", **route) + 1
    )
    generated = metric_value(text, "vllm:generation_tokens_total") - metric_value(
        before, "vllm:generation_tokens_total"
    )
    assert 1 <= generated <= 5
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prompt_tokens_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "kaito_inference_requests_in_flight",
        "kaito_inference_request_duration_seconds_count",
        "kaito_inference_time_to_first_token_seconds_count",
    ):
        assert f"\n{name}" in text, name


def _generated(http: httpx.Client) -> float:
    return metric_value(metrics_text(http), "vllm:generation_tokens_total")


def _assert_generation_stopped(
    http: httpx.Client, before_tokens: float, aborted_before: float
) -> None:
    text = wait_idle(http, timeout=5.0)
    assert metric_value(text, "kaito_inference_generations_aborted_total") == aborted_before + 1
    settled = _generated(http)
    time.sleep(0.5)
    assert _generated(http) == settled, "the engine kept generating after the client left"
    assert settled - before_tokens < LONG


def test_closing_a_stream_aborts_its_generation(client: openai.OpenAI, http: httpx.Client) -> None:
    text = wait_idle(http)
    aborted = metric_value(text, "kaito_inference_generations_aborted_total")
    tokens = metric_value(text, "vllm:generation_tokens_total")
    stream = client.chat.completions.create(
        model="alpha",
        messages=[{"role": "user", "content": "hello world"}],
        max_tokens=LONG,
        temperature=0,
        stream=True,
    )
    for received, _chunk in enumerate(stream, 1):
        if received == 5:
            break
    stream.close()
    _assert_generation_stopped(http, tokens, aborted)


def test_disconnecting_during_a_non_streamed_request_aborts_it(
    server: ServerProcess, http: httpx.Client
) -> None:
    text = wait_idle(http)
    aborted = metric_value(text, "kaito_inference_generations_aborted_total")
    tokens = metric_value(text, "vllm:generation_tokens_total")
    with (
        httpx.Client(base_url=server.base_url, timeout=0.5) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post(
            "/v1/completions",
            json={"model": "tiny", "prompt": "hello", "max_tokens": LONG, "temperature": 0},
        )
    _assert_generation_stopped(http, tokens, aborted)


def test_a_half_sent_request_does_not_reach_the_engine(
    server: ServerProcess, http: httpx.Client
) -> None:
    tokens = _generated(http)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model": "tiny"'
        )
    wait_idle(http)
    assert _generated(http) == tokens

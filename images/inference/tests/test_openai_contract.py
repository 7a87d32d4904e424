"""The OpenAI API contract, through the official `openai` client, on both engines."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from harness import MUTED_ADAPTER, Reference, ServerProcess

PROMPT = "hello world"
N_TOKENS = 16


def same_text(actual: str | None, expected: str) -> bool:
    """Equal, except that vLLM never flushes a trailing incomplete UTF-8 sequence (which
    a full decode renders as U+FFFD); random tiny-model output ends in one now and then."""
    return (actual or "").rstrip("\ufffd") == expected.rstrip("\ufffd")


def chat(client: openai.OpenAI, model: str, content: str = PROMPT, **kwargs: object) -> str:
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=kwargs.pop("max_tokens", N_TOKENS),
        temperature=kwargs.pop("temperature", 0),
        **kwargs,
    )
    return response.choices[0].message.content or ""


def test_models_lists_the_base_model_and_every_adapter(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert {"tiny", "alpha", "beta", MUTED_ADAPTER} <= set(models)
    assert models["alpha"].model_extra["parent"] == "tiny"
    assert models["tiny"].model_extra["max_model_len"] == 2048


@pytest.mark.parametrize("model", ["tiny", "alpha", "beta"])
def test_greedy_chat_matches_plain_transformers(
    client: openai.OpenAI, reference: Reference, model: str
) -> None:
    adapter = None if model == "tiny" else model
    expected = reference.greedy(reference.chat_ids(PROMPT), adapter, N_TOKENS)
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=N_TOKENS,
        temperature=0,
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert same_text(choice.message.content, expected)
    assert response.model == model
    assert response.object == "chat.completion"
    assert response.usage is not None
    assert response.usage.prompt_tokens == len(reference.chat_ids(PROMPT))
    assert (
        response.usage.total_tokens
        == response.usage.prompt_tokens + response.usage.completion_tokens
    )
    if choice.finish_reason == "length":
        assert response.usage.completion_tokens == N_TOKENS


def test_each_adapter_visibly_changes_the_output(client: openai.OpenAI) -> None:
    outputs = {model: chat(client, model) for model in ("tiny", "alpha", "beta")}
    assert len(set(outputs.values())) == 3, outputs


def test_adapter_strength_follows_the_engine(client: openai.OpenAI, server: ServerProcess) -> None:
    """Strength 0 (env `alpha_muted=0`): transformers serves the base model's output through
    its weighted adapter; vLLM cannot scale adapters and serves alpha at full strength."""
    muted = chat(client, MUTED_ADAPTER)
    if server.engine == "transformers":
        assert muted == chat(client, "tiny")
    else:
        assert muted == chat(client, "alpha")


def test_streamed_chat_equals_the_non_streamed_answer_and_reports_usage(
    client: openai.OpenAI,
) -> None:
    expected = chat(client, "alpha")
    stream = client.chat.completions.create(
        model="alpha",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=N_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert len(finishes) == 1
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens <= N_TOKENS
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)


def test_stream_is_server_sent_events_ending_with_done(http: httpx.Client) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 4,
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    for line in events[:-1]:
        assert "usage" not in json.loads(line[6:])  # no include_usage: no usage field


def test_n_returns_n_choices_and_a_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def sample() -> list[str]:
        response = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=8,
            temperature=1.0,
            n=2,
            seed=1234,
        )
        assert [c.index for c in response.choices] == [0, 1]
        return [c.message.content or "" for c in response.choices]

    first = sample()
    assert sample() == first
    assert first[0] != first[1]  # each choice samples with its own seed


def test_streamed_n_choices_each_finish(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="beta",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=6,
        n=3,
        stream=True,
    )
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1, 2}


def test_stop_string_ends_the_answer_before_it(client: openai.OpenAI, reference: Reference) -> None:
    full = reference.greedy(reference.chat_ids(PROMPT), "alpha", N_TOKENS)
    stop = full[6:9]
    expected = full[: full.find(stop)]
    response = client.chat.completions.create(
        model="alpha",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=N_TOKENS,
        temperature=0,
        stop=[stop],
    )
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model="alpha",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=N_TOKENS,
        temperature=0,
        stop=stop,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_completions_accept_text_token_ids_and_batches(
    client: openai.OpenAI, reference: Reference
) -> None:
    ids = reference.tokenizer.encode("the quick brown fox")
    expected = reference.greedy(ids, "beta", 8)
    by_text = client.completions.create(
        model="beta", prompt="the quick brown fox", max_tokens=8, temperature=0
    )
    assert by_text.object == "text_completion"
    assert same_text(by_text.choices[0].text, expected)
    by_ids = client.completions.create(model="beta", prompt=ids, max_tokens=8, temperature=0)
    assert same_text(by_ids.choices[0].text, expected)
    batch = client.completions.create(
        model="beta", prompt=["the quick brown fox", "hello"], max_tokens=8, temperature=0
    )
    assert [c.index for c in batch.choices] == [0, 1]
    assert same_text(batch.choices[0].text, expected)
    echoed = client.completions.create(
        model="beta", prompt="the quick brown fox", max_tokens=8, temperature=0, echo=True
    )
    assert same_text(echoed.choices[0].text, "the quick brown fox" + expected)


def test_streamed_completion_with_usage(client: openai.OpenAI, reference: Reference) -> None:
    ids = reference.tokenizer.encode("one two three")
    expected = reference.greedy(ids, None, 10)
    stream = client.completions.create(
        model="tiny",
        prompt="one two three",
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert same_text("".join(c.choices[0].text for c in chunks if c.choices), expected)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == len(ids)


def test_completions_default_to_sixteen_tokens(client: openai.OpenAI) -> None:
    response = client.completions.create(model="tiny", prompt="hello", temperature=0)
    assert response.usage is not None
    assert response.usage.completion_tokens <= 16
    if response.choices[0].finish_reason == "length":
        assert response.usage.completion_tokens == 16


def test_quickstart_chat_endpoint(http: httpx.Client) -> None:
    response = http.post(
        "/chat",
        json={
            "prompt": "hello world",
            "generate_kwargs": {"max_new_tokens": 5, "do_sample": False},
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["Result"].startswith("hello world")
    messages = http.post(
        "/chat",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "generate_kwargs": {"max_length": 20},
        },
    )
    assert messages.status_code == 200, messages.text
    assert isinstance(messages.json()["Result"], str)
    missing = http.post("/chat", json={"generate_kwargs": {}})
    assert missing.status_code == 400
    assert missing.json()["error"]["message"] == "Text generation parameter prompt required"


def test_ignore_eos_generates_exactly_max_tokens(client: openai.OpenAI) -> None:
    """vLLM's extension, used by benchmarks for fixed output lengths."""
    response = client.completions.create(
        model="tiny",
        prompt="hello",
        max_tokens=40,
        extra_body={"ignore_eos": True, "repetition_penalty": 1.1, "top_k": 5},
    )
    assert response.usage is not None
    assert response.usage.completion_tokens == 40
    assert response.choices[0].finish_reason == "length"

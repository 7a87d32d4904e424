"""Running admitted generations and writing their responses (JSON or SSE).

One HTTP request becomes one or more engine generations ("choices": prompts x n). A
single choice, the common case, is streamed straight from the engine's iterator; several
are merged through a queue by tasks owned by the merging generator. Whatever ends the
response early (client disconnect, cancellation, an error) aborts every generation that
has not finished, before the handler returns.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from .engines import Adapter, Delta, Engine, SamplingOptions
from .metrics import ServerMetrics
from .protocol import error_body

log = structlog.get_logger(__name__)

_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
DONE = b"data: [DONE]\n\n"


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def json_text(value: object) -> str:
    # json.dumps builds a new encoder per call when given options; this runs per token.
    return _ENCODER.encode(value)


@dataclass(kw_only=True)
class Choice:
    """One generation of a request: its prompt, options and accumulated output."""

    index: int
    request_id: str
    prompt_token_ids: list[int]
    options: SamplingOptions
    prefix: str = ""  # echoed prompt text (completions with echo)
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None


@dataclass(kw_only=True)
class Generation:
    """All choices of one request, run against one engine and adapter."""

    engine: Engine
    adapter: Adapter | None
    choices: list[Choice]
    metrics: ServerMetrics
    started: float = field(default_factory=time.perf_counter)
    _first_token_seen: bool = False

    @property
    def prompt_tokens(self) -> int:
        # n samples of the same prompt count that prompt once, as OpenAI does.
        seen: dict[int, int] = {}
        for choice in self.choices:
            seen[id(choice.prompt_token_ids)] = len(choice.prompt_token_ids)
        return sum(seen.values())

    @property
    def completion_tokens(self) -> int:
        return sum(choice.tokens for choice in self.choices)

    def usage(self) -> dict[str, int]:
        prompt, completion = self.prompt_tokens, self.completion_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _stream(self, choice: Choice) -> AsyncIterator[Delta]:
        return self.engine.generate(
            request_id=choice.request_id,
            prompt_token_ids=choice.prompt_token_ids,
            options=choice.options,
            adapter=self.adapter,
        )

    async def deltas(self) -> AsyncIterator[tuple[Choice, Delta]]:
        """Deltas of every choice as they come; aborts unfinished choices on exit."""
        try:
            if len(self.choices) == 1:
                choice = self.choices[0]
                stream = self._stream(choice)
                try:
                    async for delta in stream:
                        self._record(choice, delta)
                        yield choice, delta
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]
            else:
                async for item in self._merged():
                    yield item
        finally:
            unfinished = [c for c in self.choices if c.finish_reason is None]
            if unfinished:
                self.metrics.aborted.inc(len(unfinished))
                for choice in unfinished:
                    await self.engine.abort(choice.request_id)
                log.info(
                    "generation aborted",
                    request_ids=[c.request_id for c in unfinished],
                    tokens=sum(c.tokens for c in unfinished),
                )

    def _record(self, choice: Choice, delta: Delta) -> None:
        if not self._first_token_seen and delta.tokens:
            self._first_token_seen = True
            self.metrics.ttft.observe(time.perf_counter() - self.started)
        if delta.text:
            choice.text.append(delta.text)
        choice.tokens += delta.tokens
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason

    async def _merged(self) -> AsyncIterator[tuple[Choice, Delta]]:
        queue: asyncio.Queue[tuple[Choice, Delta | Exception]] = asyncio.Queue()

        async def pump(choice: Choice) -> None:
            stream = self._stream(choice)
            try:
                async for delta in stream:
                    await queue.put((choice, delta))
            except Exception as exc:
                await queue.put((choice, exc))
            finally:
                await stream.aclose()  # type: ignore[attr-defined]

        tasks = [asyncio.create_task(pump(choice)) for choice in self.choices]
        try:
            remaining = len(tasks)
            while remaining:
                choice, item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                self._record(choice, item)
                yield choice, item
                if item.finish_reason is not None:
                    remaining -= 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class SSEWriter:
    """Server-sent events on an aiohttp response, with OpenAI's chunk envelope."""

    def __init__(self, request: web.Request, envelope: dict[str, Any], include_usage: bool):
        self._request = request
        self._response = web.StreamResponse(headers=_SSE_HEADERS)
        # Chunks share everything but "choices" (and "usage"); build that text once.
        head = json_text(envelope)[:-1]
        self._head = head + ',"choices":['
        self._tail = '],"usage":null}' if include_usage else "]}"
        self._usage_head = head + ',"choices":[],"usage":'

    async def open(self) -> None:
        await self._response.prepare(self._request)

    async def choices(self, choices_json: str) -> None:
        await self._response.write(
            b"data: " + (self._head + choices_json + self._tail).encode() + b"\n\n"
        )

    async def usage(self, usage: dict[str, int]) -> None:
        await self._response.write(
            b"data: " + (self._usage_head + json_text(usage) + "}").encode() + b"\n\n"
        )

    async def error(self, message: str, type_: str) -> None:
        await self._response.write(b"data: " + json_text(error_body(message, type_=type_)).encode())
        await self._response.write(b"\n\n")

    async def done(self) -> web.StreamResponse:
        await self._response.write(DONE)
        await self._response.write_eof()
        return self._response


async def stream_response(
    request: web.Request,
    generation: Generation,
    *,
    envelope: dict[str, Any],
    include_usage: bool,
    first_chunk: Callable[[Choice], str] | None,
    delta_chunk: Callable[[Choice, Delta], str],
    on_error: Callable[[Exception], tuple[str, str]],
) -> web.StreamResponse:
    """Stream `generation` as SSE: optional opening chunk per choice, deltas, usage, DONE."""
    writer = SSEWriter(request, envelope, include_usage)
    await writer.open()
    if first_chunk is not None:
        for choice in generation.choices:
            await writer.choices(first_chunk(choice))
    try:
        async for choice, delta in generation.deltas():
            # A delta with tokens but no text (an incomplete UTF-8 sequence held back) is
            # still sent, as vLLM's server does: clients time first tokens by chunks.
            if not delta.tokens and not delta.text and delta.finish_reason is None:
                continue
            await writer.choices(delta_chunk(choice, delta))
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:
        message, type_ = on_error(exc)
        await writer.error(message, type_)
        return await writer.done()
    if include_usage:
        await writer.usage(generation.usage())
    return await writer.done()


async def collect(generation: Generation) -> None:
    """Run `generation` to the end, accumulating each choice's text and tokens."""
    async for _ in generation.deltas():
        pass


# -- OpenAI chunk bodies (the "choices" entries), built as text on the hot path --


def chat_first_chunk(choice: Choice) -> str:
    return (
        f'{{"index":{choice.index},"delta":{{"role":"assistant","content":""}},'
        '"logprobs":null,"finish_reason":null}'
    )


def _finish(delta: Delta) -> str:
    return "null" if delta.finish_reason is None else f'"{delta.finish_reason}"'


def chat_delta_chunk(choice: Choice, delta: Delta) -> str:
    content = f'{{"content":{json_text(delta.text)}}}' if delta.text or delta.tokens else "{}"
    return (
        f'{{"index":{choice.index},"delta":{content},"logprobs":null,'
        f'"finish_reason":{_finish(delta)}}}'
    )


def completion_echo_chunk(choice: Choice) -> str:
    return (
        f'{{"index":{choice.index},"text":{json_text(choice.prefix)},"logprobs":null,'
        '"finish_reason":null}'
    )


def completion_delta_chunk(choice: Choice, delta: Delta) -> str:
    return (
        f'{{"index":{choice.index},"text":{json_text(delta.text)},"logprobs":null,'
        f'"finish_reason":{_finish(delta)}}}'
    )

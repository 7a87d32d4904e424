"""Engine faults a real engine cannot produce on demand, through a scripted engine.

Everything else in this suite runs real engines; here a scripted `Engine` fails in the
ways that matter to the HTTP contract: a crash mid-stream, a rejection, a full queue, a
dead engine, and an engine still loading.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from kaito_inference.config import parse_settings
from kaito_inference.engines import (
    Adapter,
    Delta,
    Engine,
    EngineError,
    EngineInfo,
    EngineOverloadedError,
    EngineRequestError,
    SamplingOptions,
)
from kaito_inference.server import Server

pytestmark = pytest.mark.asyncio


class ScriptedEngine(Engine):
    """Streams "a", "b", ... then does whatever `failure` says."""

    def __init__(self) -> None:
        self.failure: Exception | None = None
        self.fail_after = 2
        self.healthy = True
        self.aborted: list[str] = []

    async def start(self) -> EngineInfo:
        return EngineInfo(model_path="/m", served_model_name="m", max_model_len=64, vocab_size=100)

    async def stop(self) -> None:
        pass

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) % 100 for c in text]

    def apply_chat_template(self, messages: Sequence[dict[str, object]]) -> str:
        return "".join(str(m["content"]) for m in messages)

    async def generate(
        self,
        *,
        request_id: str,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        adapter: Adapter | None,
    ) -> AsyncIterator[Delta]:
        for i in range(options.max_tokens):
            if self.failure is not None and i == self.fail_after:
                raise self.failure
            await asyncio.sleep(0)
            last = i == options.max_tokens - 1
            yield Delta(
                text=chr(ord("a") + i % 26), tokens=1, finish_reason="length" if last else None
            )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def check_health(self) -> None:
        if not self.healthy:
            raise EngineError("engine core died")


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedEngine, Server, aiohttp.ClientSession, str]]:
    engine = ScriptedEngine()
    server = Server(parse_settings(["--model", "/m", "--adapters-dir", ""]), engine)
    test_server = TestServer(server.app())
    await test_server.start_server()
    async with aiohttp.ClientSession() as session:
        yield engine, server, session, str(test_server.make_url(""))
    await test_server.close()


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def test_everything_but_probes_is_503_while_loading(scripted: Any) -> None:
    _engine, _server, session, url = scripted
    for method, path in [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/chat"),
        ("GET", "/v1/models"),
    ]:
        async with session.request(method, url + path, json=CHAT) as r:
            assert r.status == 503
            assert "still loading" in (await r.json())["error"]["message"]
    async with session.get(url + "/health") as r:
        assert r.status == 503
        assert (await r.json())["status"] == "loading"
    async with session.get(url + "/metrics") as r:
        assert r.status == 200


async def test_an_engine_crash_mid_stream_ends_the_stream_with_an_error_event(
    scripted: Any,
) -> None:
    engine, server, session, url = scripted
    server.mark_ready(await engine.start())
    engine.failure = EngineError("boom")
    async with session.post(url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status == 200
        events = [line for line in (await r.text()).split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][len("data: ") :])["error"]
    assert error["type"] == "internal_server_error"
    assert "boom" in error["message"]
    assert engine.aborted  # the failed generation was aborted


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (EngineRequestError("bad sampling"), 400),
        (EngineOverloadedError("engine queue full"), 429),
        (EngineError("boom"), 500),
    ],
)
async def test_engine_failures_map_to_statuses(
    scripted: Any, failure: Exception, status: int
) -> None:
    engine, server, session, url = scripted
    server.mark_ready(await engine.start())
    engine.failure = failure
    async with session.post(url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == status
        assert str(failure) in (await r.json())["error"]["message"]


async def test_health_reports_a_dead_engine(scripted: Any) -> None:
    engine, server, session, url = scripted
    server.mark_ready(await engine.start())
    engine.healthy = False
    async with session.get(url + "/healthz") as r:
        assert r.status == 503
        assert (await r.json()) == {"status": "unhealthy", "error": "engine core died"}


async def test_an_adapter_on_an_engine_without_lora_is_a_400(scripted: Any, tmp_path: Any) -> None:
    engine, server, session, url = scripted
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "adapter_config.json").write_text("{}")
    server.settings.adapters_dir = tmp_path
    server.mark_ready(await engine.start())
    type(engine).serves_adapters = property(lambda self: False)  # type: ignore[assignment]
    try:
        async with session.post(url + "/v1/chat/completions", json={**CHAT, "model": "ad"}) as r:
            assert r.status == 400
            assert "without LoRA support" in (await r.json())["error"]["message"]
    finally:
        del type(engine).serves_adapters

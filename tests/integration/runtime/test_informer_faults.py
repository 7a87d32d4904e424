"""Informer behaviour under faults a real apiserver cannot produce on demand.

Scripted server (see scripted_apiserver.py): bookmarks followed by a clean close, 410
Gone on the watch request and as an ERROR event, a stream that goes silent, and 429
with Retry-After. The normal LIST -> WATCH path is tested against the real server in
test_informer.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kaito.runtime.backoff import Backoff
from kaito.runtime.informer import Informer
from kaito.runtime.resource import CONFIGMAPS

from .scripted_apiserver import ScriptedApiserver, configmap, list_response, status, watch_stream

PATH = "/api/v1/namespaces/default/configmaps"
WATCH = PATH + "?watch"


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def on_add(self, obj: dict[str, Any]) -> None:
        self.events.append(("add", obj["metadata"]["name"]))

    def on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.events.append(("update", new["metadata"]["name"]))

    def on_delete(self, obj: dict[str, Any]) -> None:
        self.events.append(("delete", obj["metadata"]["name"]))


@pytest.fixture
async def server() -> AsyncIterator[ScriptedApiserver]:
    s = ScriptedApiserver()
    await s.start()
    yield s
    await s.stop()


def fast_backoff() -> Backoff:
    return Backoff(initial=0.05, cap=0.2, jitter=0.0)


async def run_until(informer: Informer, cond: Any, timeout: float = 5.0) -> None:
    task = asyncio.create_task(informer.run())
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await informer.client.close()


async def test_bookmark_advances_resource_version_and_clean_close_rewatches_without_list(
    server: ScriptedApiserver,
) -> None:
    server.on("GET", PATH, list_response([configmap("a", "5")], rv="10"))
    bookmark = {
        "type": "BOOKMARK",
        "object": {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "20"}},
    }
    server.on("GET", WATCH, watch_stream(bookmark), watch_stream(then="silent"))
    inf = Informer(server.client(), CONFIGMAPS, namespace="default", backoff=fast_backoff())
    await run_until(inf, lambda: len(server.calls("GET", PATH, watch=True)) >= 2)
    watches = server.calls("GET", PATH, watch=True)
    assert len(server.calls("GET", PATH, watch=False)) == 1, "a clean close must not relist"
    assert watches[0].query["resourceVersion"] == "10", "the first watch starts at the list's RV"
    assert watches[0].query["allowWatchBookmarks"] == "true"
    assert watches[1].query["resourceVersion"] == "20", "the bookmark advanced the RV"
    assert 300 <= int(watches[0].query["timeoutSeconds"]) <= 600


@pytest.mark.parametrize("how", ["http-410", "error-event-410"])
async def test_gone_relists_and_reports_objects_deleted_in_the_gap(
    server: ScriptedApiserver, how: str
) -> None:
    server.on(
        "GET",
        PATH,
        list_response([configmap("a", "5"), configmap("b", "6")], rv="10"),
        list_response([configmap("a", "5"), configmap("c", "30")], rv="40"),
    )
    gone = (
        status(410, "Expired")
        if how == "http-410"
        else watch_stream(
            {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
        )
    )
    server.on("GET", WATCH, gone, watch_stream(then="silent"))
    rec = Recorder()
    inf = Informer(server.client(), CONFIGMAPS, namespace="default", backoff=fast_backoff())
    inf.add_handler(rec)
    await run_until(inf, lambda: len(server.calls("GET", PATH, watch=True)) >= 2)
    assert len(server.calls("GET", PATH, watch=False)) == 2
    assert rec.events == [("add", "a"), ("add", "b"), ("add", "c"), ("delete", "b")]
    assert sorted(inf.cache.keys()) == ["default/a", "default/c"], (
        "the cache equals the server after relist"
    )
    assert server.calls("GET", PATH, watch=True)[-1].query["resourceVersion"] == "40"


async def test_silent_stream_is_detected_and_reconnects_with_backoff(
    server: ScriptedApiserver,
) -> None:
    server.on("GET", PATH, list_response([], rv="10"))
    server.on("GET", WATCH, watch_stream(then="silent"))
    inf = Informer(
        server.client(),
        CONFIGMAPS,
        namespace="default",
        inactivity_timeout=(0.2, 0.2),
        backoff=Backoff(initial=0.1, cap=0.4, jitter=0.0),
    )
    await run_until(inf, lambda: len(server.calls("GET", PATH, watch=True)) >= 4, timeout=10)
    watches = server.calls("GET", PATH, watch=True)
    gaps = [b.at - a.at for a, b in itertools.pairwise(watches)]
    # silence (0.2 s) + backoff 0.1, 0.2, 0.4: each reconnect waits longer than the last
    assert gaps[0] >= 0.28 and gaps[1] >= 0.38 and gaps[2] >= 0.58, gaps
    assert all(w.query["resourceVersion"] == "10" for w in watches), "reconnect resumes, no relist"
    assert len(server.calls("GET", PATH, watch=False)) == 1


async def test_429_retry_after_is_honoured(server: ScriptedApiserver) -> None:
    server.on(
        "GET",
        PATH,
        status(429, "TooManyRequests", retry_after="1"),
        list_response([configmap("a", "1")], rv="2"),
    )
    async with server.client() as client:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        page = await client.list(CONFIGMAPS, "default")
        elapsed = loop.time() - t0
    assert [i["metadata"]["name"] for i in page["items"]] == ["a"]
    assert elapsed >= 0.95, f"retried after {elapsed:.2f}s, before the server's Retry-After"
    calls = server.calls("GET", PATH)
    assert calls[1].at - calls[0].at >= 0.95


async def test_watch_closed_at_once_is_retried_with_backoff_not_in_a_hot_loop(
    server: ScriptedApiserver,
) -> None:
    server.on("GET", PATH, list_response([], rv="10"))
    server.on("GET", WATCH, watch_stream())  # headers, then an immediate clean close
    inf = Informer(
        server.client(),
        CONFIGMAPS,
        namespace="default",
        backoff=Backoff(initial=0.1, cap=0.4, jitter=0.0),
    )
    await run_until(inf, lambda: len(server.calls("GET", PATH, watch=True)) >= 4, timeout=10)
    watches = server.calls("GET", PATH, watch=True)
    gaps = [b.at - a.at for a, b in itertools.pairwise(watches)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39, gaps
    assert len(server.calls("GET", PATH, watch=False)) == 1, (
        "a short watch is not a reason to relist"
    )

"""Informer + cache against the real kube-apiserver: LIST -> WATCH continuity, events,
indexes, and the cache equal to the server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from kaito.runtime.client import Client
from kaito.runtime.informer import Informer
from kaito.runtime.resource import CONFIGMAPS, NAMESPACES


class SpyClient(Client):
    """The real client, recording the LIST and WATCH parameters it sends."""

    def __init__(self, inner: Client) -> None:
        super().__init__(inner.config)
        self.lists: list[dict[str, Any]] = []
        self.watches: list[dict[str, Any]] = []

    async def list(self, res: Any, namespace: str | None = None, **kw: Any) -> dict[str, Any]:  # type: ignore[override]
        page = await super().list(res, namespace, **kw)
        self.lists.append({**kw, "returned_rv": page["metadata"].get("resourceVersion")})
        return page

    @asynccontextmanager
    async def watch(self, res: Any, namespace: str | None = None, **kw: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        self.watches.append(kw)
        async with super().watch(res, namespace, **kw) as stream:
            yield stream


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def on_add(self, obj: dict[str, Any]) -> None:
        self.events.append(("add", obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))

    def on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.events.append(("update", new["metadata"]["name"], new["metadata"]["resourceVersion"]))

    def on_delete(self, obj: dict[str, Any]) -> None:
        self.events.append(("delete", obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))


async def make_namespace(client: Client) -> str:
    ns = f"inf-{uuid.uuid4().hex[:8]}"
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    return ns


async def eventually(cond: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def test_list_then_watch_from_list_rv_and_rewatch_after_clean_close_without_list(
    client: Client,
) -> None:
    ns = await make_namespace(client)
    await client.create(CONFIGMAPS, {"metadata": {"name": "pre", "namespace": ns}})
    spy = SpyClient(client)
    inf = Informer(spy, CONFIGMAPS, namespace=ns, watch_timeout=(1, 1))
    task = asyncio.create_task(inf.run())
    try:
        assert await inf.wait_for_sync(10)
        await eventually(lambda: len(spy.watches) >= 3, timeout=15)  # server closes each after 1 s
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await spy.close()
    assert len(spy.lists) == 1, "clean watch closes must not relist"
    assert spy.watches[0]["resource_version"] == spy.lists[0]["returned_rv"]
    assert all(w["allow_bookmarks"] is not False for w in spy.watches)
    rvs = [int(w["resource_version"]) for w in spy.watches]
    assert rvs == sorted(rvs), "each re-watch resumes at or after the previous resourceVersion"


async def test_events_reach_handlers_and_cache_equals_server(client: Client) -> None:
    ns = await make_namespace(client)
    inf = Informer(client, CONFIGMAPS, namespace=ns)
    rec = Recorder()
    inf.add_handler(rec)
    task = asyncio.create_task(inf.run())
    try:
        assert await inf.wait_for_sync(10)
        for i in range(5):
            await client.create(
                CONFIGMAPS,
                {"metadata": {"name": f"c{i}", "namespace": ns, "labels": {"i": str(i % 2)}}},
            )
        await client.patch(CONFIGMAPS, "c1", {"data": {"x": "y"}}, ns)
        await client.delete(CONFIGMAPS, "c2", ns)
        await eventually(lambda: ("delete", "c2") in [(e[0], e[1]) for e in rec.events])
        server = {
            i["metadata"]["name"]: i["metadata"]["resourceVersion"]
            for i in await client.list_all(CONFIGMAPS, ns)
        }
        cached = {
            o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in inf.cache.list(ns)
        }
        # kube-root-ca.crt is created by the controller-manager in every namespace
        assert cached == server
        assert {o["metadata"]["name"] for o in inf.cache.list(ns, label_selector="i=1")} == {
            "c1",
            "c3",
        }
        assert ("update", "c1") in [(e[0], e[1]) for e in rec.events]
        assert all("managedFields" not in o["metadata"] for o in inf.cache.list(ns))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

"""Manager lifecycle against the real kube-apiserver (RUNTIME.md semantics 7).

/readyz fails until every informer has synced; stop takes no new work, lets in-flight
reconciles finish within the grace period, cancels them after it; no task outlives run().
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.manager import Manager, ManagerOptions
from kaito.runtime.reconcile import Request
from kaito.runtime.resource import CONFIGMAPS, CUSTOMRESOURCEDEFINITIONS, NAMESPACES, Resource


def options(**kw: Any) -> ManagerOptions:
    return ManagerOptions(
        metrics_bind_address="127.0.0.1:0", health_probe_bind_address="127.0.0.1:0", **kw
    )


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def eventually(cond: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.05)


def crd(group: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"gadgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


async def test_readyz_fails_until_caches_sync(client: Client) -> None:
    group = f"g{uuid.uuid4().hex[:6]}.kaito.sh"
    gadgets = Resource(group, "v1", "gadgets", "Gadget")  # its CRD does not exist yet: LIST 404s
    mgr = Manager(client, options(cache_sync_timeout=60))

    async def reconcile(req: Request) -> None:
        return None

    mgr.controller("gadgets", reconcile).for_(gadgets)
    run = asyncio.create_task(mgr.run())
    try:

        async def serving() -> bool:
            return mgr.probe_server is not None and mgr.probe_server.port is not None

        await eventually(serving)
        assert mgr.probe_server is not None
        base = f"http://127.0.0.1:{mgr.probe_server.port}"
        status, body = await get(f"{base}/readyz")
        assert status == 503
        assert f"gadgets.{group}" in body
        assert (await get(f"{base}/healthz"))[0] == 200, "alive while not ready"
        await client.create(CUSTOMRESOURCEDEFINITIONS, crd(group))

        async def ready() -> bool:
            return (await get(f"{base}/readyz"))[0] == 200

        await eventually(ready, timeout=30)  # informer backoff is 0.8 s doubling
    finally:
        mgr.stop()
        await run
        await client.delete(CUSTOMRESOURCEDEFINITIONS, f"gadgets.{group}")


async def test_stop_before_caches_sync_returns_cleanly(client: Client) -> None:
    """A SIGTERM during start-up is a stop, not a crash: run() returns, no CancelledError."""
    group = f"g{uuid.uuid4().hex[:6]}.kaito.sh"
    gadgets = Resource(group, "v1", "gadgets", "Gadget")  # never served: caches never sync
    mgr = Manager(client, options(cache_sync_timeout=60))

    async def reconcile(req: Request) -> None:
        return None

    mgr.controller("gadgets", reconcile).for_(gadgets)
    run = asyncio.create_task(mgr.run())

    async def serving() -> bool:
        return mgr.probe_server is not None and mgr.probe_server.port is not None

    await eventually(serving)
    mgr.stop()
    async with asyncio.timeout(15):
        await run  # raised CancelledError before the fix
    assert not run.cancelled()


async def test_stop_drains_in_flight_takes_no_new_work_and_leaks_no_tasks(client: Client) -> None:
    ns = f"mgr-{uuid.uuid4().hex[:6]}"
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    before = {t for t in asyncio.all_tasks() if not t.done()}
    started, release, finished = asyncio.Event(), asyncio.Event(), []

    async def reconcile(req: Request) -> None:
        if req.name == "slow":
            started.set()
            await release.wait()
        finished.append(req.name)

    mgr = Manager(client, options(namespace=ns, graceful_shutdown_timeout=10))
    ctrl = mgr.controller("drain", reconcile).for_(CONFIGMAPS).controller
    run = asyncio.create_task(mgr.run())
    await client.create(CONFIGMAPS, {"metadata": {"name": "slow", "namespace": ns}})
    async with asyncio.timeout(15):
        await started.wait()
    mgr.stop()
    await asyncio.sleep(0.2)
    ctrl.queue.add(Request(ns, "late"))  # arrives after stop: must not be reconciled
    assert not run.done(), "stop waits for the in-flight reconcile"
    release.set()
    async with asyncio.timeout(15):
        await run
    assert "slow" in finished
    assert "late" not in finished
    after = {t for t in asyncio.all_tasks() if not t.done()}
    assert after - before == set(), f"leaked tasks: {after - before}"
    await client.delete(NAMESPACES, ns)


async def test_in_flight_reconcile_is_cancelled_after_the_grace_period(client: Client) -> None:
    ns = f"mgr-{uuid.uuid4().hex[:6]}"
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def reconcile(req: Request) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    mgr = Manager(client, options(namespace=ns, graceful_shutdown_timeout=0.5))
    mgr.controller("stuck", reconcile).for_(CONFIGMAPS)
    run = asyncio.create_task(mgr.run())
    await client.create(CONFIGMAPS, {"metadata": {"name": "stuck", "namespace": ns}})
    async with asyncio.timeout(15):
        await started.wait()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    mgr.stop()
    async with asyncio.timeout(10):
        await run
    assert cancelled.is_set()
    assert 0.4 <= loop.time() - t0 < 3
    await client.delete(NAMESPACES, ns)


async def test_metrics_endpoint_serves_controller_runtime_families(client: Client) -> None:
    ns = f"mgr-{uuid.uuid4().hex[:6]}"
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    done = asyncio.Event()

    async def reconcile(req: Request) -> None:
        with contextlib.suppress(NotFound):
            await client.get(CONFIGMAPS, req.name, req.namespace)
        done.set()

    mgr = Manager(client, options(namespace=ns))
    mgr.controller("scraped", reconcile).for_(CONFIGMAPS)
    run = asyncio.create_task(mgr.run())
    try:
        await client.create(CONFIGMAPS, {"metadata": {"name": "one", "namespace": ns}})
        async with asyncio.timeout(15):
            await done.wait()
        assert mgr.metrics_server is not None
        status, text = await get(f"http://127.0.0.1:{mgr.metrics_server.port}/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        total = families["controller_runtime_reconcile"]  # the parser drops the _total suffix
        assert total.type == "counter"
        results = {
            s.labels["result"]: s.value
            for s in total.samples
            if s.labels.get("controller") == "scraped"
        }
        assert set(results) == {"success", "error", "requeue", "requeue_after"}
        assert results["success"] >= 1
        assert families["workqueue_depth"].type == "gauge"
        assert families["controller_runtime_reconcile_time_seconds"].type == "histogram"
        assert families["rest_client_requests"].type == "counter"
        assert not any(s.name.endswith("_created") for f in families.values() for s in f.samples)
    finally:
        mgr.stop()
        await run
        await client.delete(NAMESPACES, ns)


async def test_informer_with_a_label_selector_caches_only_matching_objects(client: Client) -> None:
    ns = f"mgr-{uuid.uuid4().hex[:6]}"
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    await client.create(
        CONFIGMAPS, {"metadata": {"name": "mine", "namespace": ns, "labels": {"owner": "me"}}}
    )
    await client.create(CONFIGMAPS, {"metadata": {"name": "other", "namespace": ns}})
    mgr = Manager(client, options(namespace=ns))
    mine = mgr.informer(CONFIGMAPS, label_selector="owner=me")
    everything = mgr.informer(CONFIGMAPS)
    assert mine is not everything and mgr.informer(CONFIGMAPS, label_selector="owner=me") is mine
    run = asyncio.create_task(mgr.run())
    try:
        assert await mine.wait_for_sync(15) and await everything.wait_for_sync(15)
        assert [o["metadata"]["name"] for o in mine.cache.list(ns)] == ["mine"]
        assert {"mine", "other"} <= {o["metadata"]["name"] for o in everything.cache.list(ns)}
    finally:
        mgr.stop()
        await run
        await client.delete(NAMESPACES, ns)

"""Reflector + informer: keep a `Cache` equal to the server and tell handlers what changed.

The loop is client-go's reflector, owned here rather than borrowed from
kubernetes-asyncio's ``Watch`` (which re-watches with a stale resourceVersion after 410
and has no read timeout):

1. LIST (paged), replace the cache, remember the list's resourceVersion.
2. WATCH from that resourceVersion with ``allowWatchBookmarks`` and a random server-side
   timeout of 300-600 s. Each event (and each BOOKMARK) advances the resourceVersion.
3. When the server closes the watch cleanly, WATCH again from the last resourceVersion:
   no LIST.
4. A 410 Gone (on the WATCH request, or as an ERROR event) means our resourceVersion was
   compacted away: LIST again. Objects that vanished in the gap are reported as
   deletions (tombstones), so their controllers still hear about them.
5. No byte for the inactivity timeout (the server sends bookmarks, so silence means a
   dead TCP stream): drop the connection and WATCH again from the last resourceVersion.
6. Failures back off 0.8 s doubling to 30 s with jitter; the backoff resets after
   2 minutes of health.

Handlers are called synchronously on the event loop and must be cheap (they enqueue keys).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp
import structlog

from kaito.runtime.backoff import Backoff
from kaito.runtime.cache import Cache, IndexFunc
from kaito.runtime.client import Client
from kaito.runtime.errors import ApiError, Gone
from kaito.runtime.meta import Obj
from kaito.runtime.resource import Resource, object_key

log = structlog.get_logger("kaito.runtime.informer")

Transform = Callable[[Obj], Obj]


class ShortWatch(Exception):
    """The server closed a watch at once without sending anything: back off, then re-watch."""


class EventHandler(Protocol):
    """What an informer tells about each change. Never branch on which one fired for
    business logic (level-based: RUNTIME.md); handlers only decide what to enqueue."""

    def on_add(self, obj: Obj) -> None: ...

    def on_update(self, old: Obj, new: Obj) -> None: ...

    def on_delete(self, obj: Obj) -> None: ...


def strip_managed_fields(obj: Obj) -> Obj:
    """Default transform: drop ``metadata.managedFields`` (often half an object's size;
    controllers never read it). controller-runtime strips it by default too."""
    obj["metadata"].pop("managedFields", None)
    return obj


class Informer:
    """Shared, indexed view of one resource (optionally one namespace / label selector)."""

    def __init__(
        self,
        client: Client,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        indexers: dict[str, IndexFunc] | None = None,
        transform: Transform | None = strip_managed_fields,
        resync_period: float = 10 * 3600.0,
        watch_timeout: tuple[int, int] = (300, 600),
        inactivity_timeout: tuple[float, float] = (70.0, 90.0),
        backoff: Backoff | None = None,
        page_size: int = 500,
    ) -> None:
        """
        Args:
            namespace: watch one namespace; default None (all namespaces).
            transform: applied to every object before it is cached; default strips
                managedFields. None keeps objects as the server sent them.
            resync_period: every period (±10 %) handlers get ``on_update(obj, obj)`` for
                every cached object; default 10 h, 0 disables.
            watch_timeout: the server-side watch timeout is drawn from this range
                (seconds); default 300-600.
            inactivity_timeout: a watch that sends no byte for a time drawn from this
                range (seconds) is considered dead; default 70-90.
            backoff: pacing of relists and re-watches after failures; default
                0.8 s doubling to 30 s, reset after 2 min.
        """
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.cache = Cache(indexers)
        self._transform = transform
        self._handlers: list[EventHandler] = []
        self._resync_period = resync_period
        self._watch_timeout = watch_timeout
        self._inactivity = inactivity_timeout
        self._backoff = backoff or Backoff()
        self._page_size = page_size
        self._synced = asyncio.Event()
        self.resource_version: str | None = None
        self.lists = 0
        """How many LISTs this informer made (1 per start, +1 per relist): for tests and metrics."""

    def __repr__(self) -> str:
        return f"Informer({self.resource}, namespace={self.namespace!r})"

    def add_handler(self, handler: EventHandler) -> None:
        """Register ``handler``; if the cache already holds objects, replay them as adds."""
        self._handlers.append(handler)
        for obj in self.cache.all():
            handler.on_add(obj)

    @property
    def has_synced(self) -> bool:
        return self.cache.has_synced

    async def wait_for_sync(self, timeout: float | None = None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._synced.wait()
        except TimeoutError:
            return False
        return True

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """LIST/WATCH until cancelled."""
        async with asyncio.TaskGroup() as tg:
            if self._resync_period > 0:
                tg.create_task(self._resync_loop(), name=f"resync {self.resource}")
            await self._list_watch_forever()

    async def _list_watch_forever(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                # Clean close by the server: watch again from the last resourceVersion.
            except Gone:
                log.info(
                    "resource version too old, relisting",
                    resource=str(self.resource),
                    rv=self.resource_version,
                )
                need_list = True
            except TimeoutError:
                log.warning(
                    "watch stream silent, reconnecting",
                    resource=str(self.resource),
                    rv=self.resource_version,
                )
                await asyncio.sleep(self._backoff.next())
            except (ApiError, ShortWatch, aiohttp.ClientError, OSError, ValueError) as e:
                delay = self._backoff.next()
                log.warning(
                    "list/watch failed, backing off",
                    resource=str(self.resource),
                    error=str(e),
                    error_type=type(e).__name__,
                    delay=round(delay, 3),
                )
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        items: list[Obj] = []
        token: str | None = None
        while True:
            page = await self.client.list(
                self.resource,
                self.namespace,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
                limit=self._page_size,
                continue_token=token,
            )
            page_items = page.get("items") or ()
            kind, api_version = self.resource.kind, self.resource.api_version
            for obj in page_items:
                # LIST items lack kind/apiVersion; watch events carry them. Make them uniform.
                obj.setdefault("kind", kind)
                obj.setdefault("apiVersion", api_version)
                items.append(self._transform(obj) if self._transform else obj)
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                self.resource_version = meta.get("resourceVersion")
                break
        self.lists += 1
        added, updated, deleted = self.cache.replace(items)
        for obj in added:
            self._dispatch_add(obj)
        for old, new in updated:
            self._dispatch_update(old, new)
        for obj in deleted:
            self._dispatch_delete(obj)
        self._synced.set()
        log.debug("listed", resource=str(self.resource), items=len(items), rv=self.resource_version)

    async def _watch(self) -> None:
        timeout = random.randint(*self._watch_timeout)
        inactivity = random.uniform(*self._inactivity)
        started = time.monotonic()
        events = 0
        async with self.client.watch(
            self.resource,
            self.namespace,
            resource_version=self.resource_version,
            timeout_seconds=timeout,
            allow_bookmarks=True,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
        ) as stream:
            while True:
                event = await stream.next(inactivity_timeout=inactivity)
                if event is None:
                    break
                events += 1
                self._apply(event)
        lasted = time.monotonic() - started
        if lasted < 1.0 and events == 0:
            # client-go's "very short watch": a server (or proxy) that closes at once
            # must not be re-watched in a hot loop.
            raise ShortWatch(f"watch closed after {lasted:.3f}s with no events")
        self._backoff.reset()

    def _apply(self, event: Obj) -> None:
        etype = event.get("type")
        obj = event.get("object") or {}
        if etype == "ERROR":
            code = obj.get("code", 500)
            err = ApiError.from_response(int(code), obj)
            raise err
        rv = obj.get("metadata", {}).get("resourceVersion")
        if etype == "BOOKMARK":
            self.resource_version = rv
            return
        if self._transform is not None:
            obj = self._transform(obj)
        if etype in ("ADDED", "MODIFIED"):
            old = self.cache.upsert(obj)
            if old is None:
                self._dispatch_add(obj)
            else:
                self._dispatch_update(old, obj)
        elif etype == "DELETED":
            # The DELETED event carries the object's final state: report that one.
            self.cache.delete(object_key(obj))
            self._dispatch_delete(obj)
        self.resource_version = rv

    async def _resync_loop(self) -> None:
        await self._synced.wait()
        while True:
            await asyncio.sleep(self._resync_period * random.uniform(0.9, 1.1))
            for obj in self.cache.all():
                self._dispatch_update(obj, obj)

    # -- dispatch: a failing handler must not kill the informer ----------------------------

    def _dispatch_add(self, obj: Obj) -> None:
        for h in self._handlers:
            try:
                h.on_add(obj)
            except Exception:
                log.exception("event handler failed", resource=str(self.resource), event="add")

    def _dispatch_update(self, old: Obj, new: Obj) -> None:
        for h in self._handlers:
            try:
                h.on_update(old, new)
            except Exception:
                log.exception("event handler failed", resource=str(self.resource), event="update")

    def _dispatch_delete(self, obj: Obj) -> None:
        for h in self._handlers:
            try:
                h.on_delete(obj)
            except Exception:
                log.exception("event handler failed", resource=str(self.resource), event="delete")

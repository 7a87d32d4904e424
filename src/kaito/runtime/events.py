"""Kubernetes Events for the objects a controller works on (``kubectl describe`` shows them).

`EventRecorder.event` is called from reconcilers, on the hot path, so it does no I/O:
it stamps the time, copies the object reference and puts the record on a bounded queue.
`EventRecorder.run` (a long-running coroutine the manager owns in its task group) writes
them one by one. A full queue drops the event with a log line, as client-go's
broadcaster does, rather than slow the reconcile down; a failed write is logged and
never reaches the caller. Events are best-effort by design: nothing may depend on them.

Repeats are folded as client-go's ``EventCorrelator`` folds them: an event identical to
one written in the last ``aggregation_window`` (same involved object, type, reason,
message and source) patches the existing Event's ``count`` and ``lastTimestamp``
instead of creating another object, so a reconcile that fails the same way every few
seconds leaves one line with a rising count rather than hundreds of Events.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import structlog

from kaito.runtime.backoff import Backoff
from kaito.runtime.client import Client
from kaito.runtime.errors import AlreadyExists, ApiError, NotFound, WriteFenced
from kaito.runtime.meta import Obj
from kaito.runtime.resource import EVENTS
from kaito.runtime.timestamps import format_rfc3339

__all__ = ["EventRecorder", "EventType"]

log = structlog.get_logger(__name__)


_REF_FIELDS = ("kind", "apiVersion", "name", "namespace", "uid", "resourceVersion")
_ATTEMPTS = 3
"""Tries of a write that fails transiently (5xx, connection errors)."""


def _retry_backoff() -> Backoff:
    """Pauses between the tries of one write: 0.5 s, then 2 s."""
    return Backoff(initial=0.5, factor=4.0, cap=2.0, jitter=0.0)


class EventType(enum.StrEnum):
    """The two Event types Kubernetes accepts."""

    NORMAL = "Normal"
    WARNING = "Warning"


@dataclass(slots=True)
class _Pending:
    """An event as recorded by `EventRecorder.event`, not yet written."""

    ref: dict[str, str]
    type: str
    reason: str
    message: str
    wall: float  # epoch seconds when it happened
    mono: float  # monotonic seconds when it happened (for the aggregation window)


@dataclass(slots=True)
class _Written:
    """What the recorder remembers of an Event it wrote, to fold identical repeats into it."""

    namespace: str
    name: str
    count: int
    first_timestamp: str
    last_mono: float


@dataclass(slots=True)
class _Write:
    """One planned request; replaying it is harmless (fixed name, absolute count)."""

    pending: _Pending
    namespace: str
    name: str
    count: int
    first_timestamp: str
    patch: bool


class EventRecorder:
    """Records Events for objects; one per component, shared by its controllers."""

    def __init__(
        self,
        client: Client,
        *,
        component: str,
        host: str | None = None,
        queue_size: int = 1000,
        aggregation_window: float = 600.0,
        cache_size: int = 4096,
        flush_timeout: float = 5.0,
    ) -> None:
        """Options, keyword-only:

        - ``component``: ``source.component`` and ``reportingComponent`` of every Event
          (e.g. ``"workspace-controller"``).
        - ``host`` (None): ``source.host`` and ``reportingInstance``, e.g. the pod name.
        - ``queue_size`` (1000, client-go's): events waiting to be written; beyond it new
          events are dropped and logged.
        - ``aggregation_window`` (600 s, client-go's 10 minutes): identical events within
          it are folded into one Event with a count.
        - ``cache_size`` (4096, client-go's): how many distinct events are remembered for
          folding (least recently seen forgotten first).
        - ``flush_timeout`` (5 s): how long `run` keeps writing pending events once
          cancelled.
        """
        self.component = component
        self.host = host
        self.aggregation_window = aggregation_window
        self.flush_timeout = flush_timeout
        self._client = client
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_size)
        self._cache_size = cache_size
        self._written: OrderedDict[tuple[str, ...], _Written] = OrderedDict()
        self._in_flight: _Write | None = None
        self._last_name_ns = 0
        self.dropped = 0
        """Events dropped because the queue was full or the object had no kind/name."""

    # -- the caller's side -----------------------------------------------------------------

    def event(
        self,
        obj: Obj,
        type_: EventType | Literal["Normal", "Warning"],
        reason: str,
        message: str,
    ) -> None:
        """Record an event about ``obj`` (a raw object with kind, apiVersion and metadata).

        Never blocks, never raises: it enqueues and returns. ``reason`` is a short
        UpperCamelCase word (``"WorkspaceReady"``); ``message`` is for humans. Must be
        called from the event loop's thread.
        """
        try:
            meta = obj.get("metadata") or {}
            ref = {
                "kind": obj.get("kind"),
                "apiVersion": obj.get("apiVersion"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            }
            if not ref["kind"] or not ref["name"] or type_ not in ("Normal", "Warning"):
                self.dropped += 1
                log.error(
                    "event dropped: needs a kind, a name and type Normal or Warning",
                    kind=ref["kind"],
                    name=ref["name"],
                    type=str(type_),
                    reason=reason,
                )
                return
            pending = _Pending(
                ref={k: str(v) for k, v in ref.items() if v},
                type=str(type_),
                reason=reason,
                message=message,
                wall=time.time(),
                mono=time.monotonic(),
            )
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("event dropped: queue full", name=ref["name"], reason=reason)
        except Exception as e:  # the caller is a reconcile; an event must never break it
            self.dropped += 1
            log.error("event dropped", reason=reason, error=repr(e))

    # -- the writer ------------------------------------------------------------------------

    async def run(self) -> None:
        """Write queued events until cancelled; then flush what is pending, bounded.

        On cancellation the write in flight is replayed (replays are idempotent) and the
        queue drained for at most ``flush_timeout`` seconds before the cancellation
        propagates; events still queued after that are dropped with a log line.
        """
        try:
            while True:
                pending = await self._queue.get()
                await self._write(self._plan(pending))
        except asyncio.CancelledError:
            await self._flush()
            raise

    async def _flush(self) -> None:
        try:
            async with asyncio.timeout(self.flush_timeout):
                if self._in_flight is not None:
                    await self._write(self._in_flight)
                while not self._queue.empty():
                    await self._write(self._plan(self._queue.get_nowait()))
        except TimeoutError:
            left = self._queue.qsize()
            self.dropped += left
            log.warning("events dropped at shutdown: flush timed out", pending=left)

    def _plan(self, pending: _Pending) -> _Write:
        """Decide create or patch, and remember the outcome for the next identical event."""
        ref = pending.ref
        key = (
            self.component,
            self.host or "",
            ref.get("kind", ""),
            ref.get("apiVersion", ""),
            ref.get("namespace", ""),
            ref["name"],
            ref.get("uid", ""),
            pending.type,
            pending.reason,
            pending.message,
        )
        seen = self._written.get(key)
        if seen is not None and pending.mono - seen.last_mono <= self.aggregation_window:
            seen.count += 1
            seen.last_mono = pending.mono
            self._written.move_to_end(key)
            return _Write(
                pending, seen.namespace, seen.name, seen.count, seen.first_timestamp, True
            )
        namespace = ref.get("namespace") or "default"  # cluster-scoped: "default", as client-go
        write = _Write(
            pending, namespace, self._name(ref["name"]), 1, format_rfc3339(pending.wall), False
        )
        self._written[key] = _Written(namespace, write.name, 1, write.first_timestamp, pending.mono)
        self._written.move_to_end(key)
        while len(self._written) > self._cache_size:
            self._written.popitem(last=False)
        return write

    def _name(self, obj_name: str) -> str:
        """``<object>.<hex nanoseconds>`` like client-go, unique even within one nanosecond."""
        ns = max(time.time_ns(), self._last_name_ns + 1)
        self._last_name_ns = ns
        return f"{obj_name}.{ns:016x}"

    async def _write(self, write: _Write) -> None:
        """Send one planned write, retrying transient failures; log, never raise."""
        self._in_flight = write
        backoff = _retry_backoff()
        for attempt in range(1, _ATTEMPTS + 1):
            if attempt > 1:
                await backoff.wait()
            try:
                await self._send(write)
                break
            except WriteFenced as e:  # lost leadership: retrying cannot help, nor should
                log.warning(
                    "event write failed", name=write.name, reason=write.pending.reason, error=str(e)
                )
                break
            except ApiError as e:
                if e.status < 500 or attempt == _ATTEMPTS:
                    log.warning(
                        "event write failed",
                        name=write.name,
                        reason=write.pending.reason,
                        error=str(e),
                    )
                    break
            except Exception as e:
                if attempt == _ATTEMPTS:
                    log.warning(
                        "event write failed",
                        name=write.name,
                        reason=write.pending.reason,
                        error=repr(e),
                    )
        self._in_flight = None

    async def _send(self, write: _Write) -> None:
        pending = write.pending
        if write.patch:
            patch = {"count": write.count, "lastTimestamp": format_rfc3339(pending.wall)}
            try:
                await self._client.patch(EVENTS, write.name, patch, write.namespace)
                return
            except NotFound:
                pass  # the Event expired (the apiserver keeps them 1 h): write it anew
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": write.name, "namespace": write.namespace},
            "involvedObject": pending.ref,
            "type": pending.type,
            "reason": pending.reason,
            "message": pending.message,
            "source": {"component": self.component, **({"host": self.host} if self.host else {})},
            "reportingComponent": self.component,
            "reportingInstance": self.host or "",
            "firstTimestamp": write.first_timestamp,
            "lastTimestamp": format_rfc3339(pending.wall),
            "count": write.count,
        }
        with contextlib.suppress(AlreadyExists):  # a replay of a create that reached the server
            await self._client.create(EVENTS, body)

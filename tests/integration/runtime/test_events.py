"""EventRecorder writes core/v1 Events that `kubectl describe` shows, on the real apiserver."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from kaito.runtime.client import Client
from kaito.runtime.events import EventRecorder, EventType
from kaito.runtime.resource import CONFIGMAPS, EVENTS

Obj = dict[str, Any]


@pytest.fixture
async def configmap(client: Client) -> AsyncIterator[Obj]:
    """A real object to hang events on (with kind, apiVersion, uid and resourceVersion)."""
    name = f"ev-{uuid.uuid4().hex[:10]}"
    obj = await client.create(CONFIGMAPS, {"metadata": {"name": name, "namespace": "default"}})
    yield obj
    await client.delete(CONFIGMAPS, name, "default")


@pytest.fixture
async def recorder(client: Client) -> AsyncIterator[EventRecorder]:
    """A running recorder; stopped (and awaited) after the test.

    A plain task rather than a TaskGroup: pytest-asyncio runs a fixture's set-up and
    tear-down in different tasks, and a TaskGroup must be entered and left in one.
    """
    rec = EventRecorder(client, component="kaito-test", host="test-host")
    task = asyncio.create_task(rec.run())
    yield rec
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def events_for(client: Client, name: str, namespace: str = "default") -> list[Obj]:
    listed = await client.list(EVENTS, namespace, field_selector=f"involvedObject.name={name}")
    return list(listed["items"])


async def wait_for_events(
    client: Client,
    name: str,
    until: Callable[[list[Obj]], bool],
    namespace: str = "default",
    within: float = 5.0,
) -> list[Obj]:
    """Poll the apiserver (nothing to wait on) until the object's Events satisfy `until`."""
    async with asyncio.timeout(within):
        while True:
            events = await events_for(client, name, namespace)
            if until(events):
                return events
            await asyncio.sleep(0.05)


async def test_event_is_written_with_involved_object_and_source(
    client: Client, recorder: EventRecorder, configmap: Obj
) -> None:
    name = configmap["metadata"]["name"]
    recorder.event(configmap, EventType.NORMAL, "Created", "made a configmap")
    (event,) = await wait_for_events(client, name, lambda evs: len(evs) == 1)
    meta = configmap["metadata"]
    assert event["involvedObject"] == {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "name": name,
        "namespace": "default",
        "uid": meta["uid"],
        "resourceVersion": meta["resourceVersion"],
    }
    assert event["metadata"]["name"].startswith(f"{name}.")
    assert len(event["metadata"]["name"].rpartition(".")[2]) == 16
    assert (event["type"], event["reason"], event["message"]) == (
        "Normal",
        "Created",
        "made a configmap",
    )
    assert event["source"] == {"component": "kaito-test", "host": "test-host"}
    assert event["reportingComponent"] == "kaito-test"
    assert event["count"] == 1
    assert event["firstTimestamp"] == event["lastTimestamp"]


async def test_identical_events_fold_into_one_with_a_count(
    client: Client, recorder: EventRecorder, configmap: Obj
) -> None:
    name = configmap["metadata"]["name"]
    for _ in range(3):
        recorder.event(configmap, "Warning", "Failed", "the same failure")
    events = await wait_for_events(client, name, lambda evs: any(e["count"] == 3 for e in evs))
    assert len(events) == 1
    assert events[0]["type"] == "Warning"


async def test_different_messages_make_separate_events(
    client: Client, recorder: EventRecorder, configmap: Obj
) -> None:
    name = configmap["metadata"]["name"]
    recorder.event(configmap, "Normal", "Progress", "step 1")
    recorder.event(configmap, "Normal", "Progress", "step 2")
    recorder.event(configmap, "Normal", "Progress", "step 1")
    events = await wait_for_events(
        client, name, lambda evs: sum(e["count"] for e in evs) == 3 and len(evs) >= 2
    )
    assert sorted((e["message"], e["count"]) for e in events) == [("step 1", 2), ("step 2", 1)]


async def test_cluster_scoped_objects_get_their_events_in_default(
    client: Client, recorder: EventRecorder
) -> None:
    name = f"node-{uuid.uuid4().hex[:10]}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": str(uuid.uuid4())},
    }
    recorder.event(node, "Normal", "Registered", "a node appeared")
    (event,) = await wait_for_events(client, name, lambda evs: len(evs) == 1)
    assert event["metadata"]["namespace"] == "default"
    assert "namespace" not in event["involvedObject"]


async def test_stop_flushes_pending_events_and_leaves_no_tasks(
    client: Client, configmap: Obj
) -> None:
    name = configmap["metadata"]["name"]
    before = asyncio.all_tasks()
    rec = EventRecorder(client, component="kaito-test")
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(rec.run())
        await asyncio.sleep(0)  # the writer is waiting on the queue
        for i in range(5):
            rec.event(configmap, "Normal", "Step", f"step {i}")
        task.cancel()  # stop right away: the five are still queued
    assert task.cancelled()
    assert asyncio.all_tasks() == before
    events = await events_for(client, name)
    assert sorted(e["message"] for e in events) == [f"step {i}" for i in range(5)]


async def test_event_never_raises_into_the_caller(client: Client, configmap: Obj) -> None:
    rec = EventRecorder(client, component="kaito-test", queue_size=1)
    rec.event({"metadata": {"name": "no-kind"}}, "Normal", "Bad", "no kind")
    rec.event(configmap, "Sideways", "Bad", "unknown type")  # type: ignore[arg-type]
    rec.event(configmap, "Normal", "Ok", "queued")
    rec.event(configmap, "Normal", "Full", "queue full")
    assert rec.dropped == 3


async def test_write_errors_are_logged_not_raised(
    client: Client, recorder: EventRecorder, configmap: Obj
) -> None:
    """An Event the apiserver refuses (here: its namespace does not exist) is logged, and
    the writer carries on with the next one."""
    elsewhere = {**configmap, "metadata": {**configmap["metadata"], "namespace": "no-such-ns"}}
    with capture_logs() as logs:
        recorder.event(elsewhere, "Normal", "Refused", "the namespace does not exist")
        recorder.event(configmap, "Normal", "After", "still writing")
        name = configmap["metadata"]["name"]
        (event,) = await wait_for_events(client, name, lambda evs: len(evs) == 1)
    assert event["reason"] == "After"
    (failed,) = [entry for entry in logs if entry["event"] == "event write failed"]
    assert failed["reason"] == "Refused"
    assert "404" in failed["error"]

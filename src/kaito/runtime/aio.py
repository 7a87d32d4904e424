"""Race a piece of work against an `asyncio.Event`: the work's result, or it is cancelled.

A controller often waits for something long (a cache sync, a Lease, an Azure
long-running operation) that must give way when something else happens first (stop was
asked for, the object was deleted). Doing that by hand with ``asyncio.wait(...,
FIRST_COMPLETED)`` needs five steps that are easy to get subtly wrong: wrap both sides
in tasks, wait, cancel the loser, *await* the cancelled loser (or it leaks and its
exception is never retrieved), and tell "the work finished" from "the work was
cancelled". `run_unless` does them once:

    try:
        pool = await run_unless(deleted, api.create(spec))
    except Interrupted:
        ...  # deleted first: the create was cancelled and has finished unwinding

Ties go to the work: when the work has finished by the time the race is decided, its
result (or exception) wins even if the event is set too, because a finished side effect
(a created resource, an acquired Lease) must not be silently dropped. An event already
set on entry wins at once and the work never starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["Interrupted", "run_unless"]

T = TypeVar("T")


class Interrupted(Exception):
    """The event was set before the work finished; the work was cancelled and awaited."""


async def run_unless(event: asyncio.Event, work: Awaitable[T]) -> T:
    """Await `work` unless `event` is set first; raise `Interrupted` in that case.

    The work's own exception propagates unchanged. Whichever side loses is cancelled
    and awaited before this returns, so no task outlives the call, also when the
    caller itself is cancelled (the cancellation then propagates as usual). To race a
    task that must keep running when the event wins, pass ``asyncio.shield(task)``.
    """
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    if event.is_set():
        # Cancelled before its first step: a coroutine never starts running.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise Interrupted
    fired = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((task, fired), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for side in (task, fired):
            side.cancel()
        await asyncio.gather(task, fired, return_exceptions=True)
    work_cancelled = task.cancelled() or isinstance(task.exception(), asyncio.CancelledError)
    # (A cancelled gather() ends with CancelledError as its exception rather than in the
    # cancelled state: cancelled either way.)
    if work_cancelled and fired.done() and not fired.cancelled():
        raise Interrupted
    return task.result()  # the result, the work's exception, or CancelledError

"""Blocking work that must not keep the process alive: vLLM's engine start and a group
worker's executor block a thread for tens of seconds or for the process's whole life.

``asyncio.to_thread`` uses the loop's pool, whose threads ``asyncio.run`` joins on the
way out: a server told to stop while vLLM still waits for its group would hang there
(and a head that loses a rank while loading must exit at once, `kaito_inference.group`).
A daemon thread is abandoned instead; `end_children` then stops the processes it
started.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
from collections.abc import Callable
from typing import TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

CHILD_STOP_TIMEOUT_S = 10.0


async def in_daemon_thread(fn: Callable[[], T], *, name: str) -> T:
    """``fn()`` in a daemon thread; cancelling the await abandons the thread."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future


def end_children() -> None:
    """Stop this process's multiprocessing children (vLLM's engine core or workers)
    that an abandoned thread started: SIGTERM, then SIGKILL after a grace period.
    Without it, the interpreter's exit would wait for them."""
    children = multiprocessing.active_children()
    for child in children:
        log.warning("stopping child process", name=child.name, pid=child.pid)
        child.terminate()
    for child in children:
        child.join(CHILD_STOP_TIMEOUT_S)
        if child.is_alive():
            child.kill()
            child.join(CHILD_STOP_TIMEOUT_S)

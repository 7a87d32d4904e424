"""Waiting on the real apiserver: poll a read until a predicate holds, or fail saying where
the object got stuck (its last status), instead of a bare timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

Obj = dict[str, Any]
T = TypeVar("T")


async def poll_until(
    read: Callable[[], Awaitable[T]],
    until: Callable[[T], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """``read()`` every ``interval`` s until ``until(result)``; return that result."""
    last: T | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await read()
                if until(last):
                    return last
                await asyncio.sleep(interval)
    except TimeoutError:
        status = last.get("status") if isinstance(last, dict) else last
        raise AssertionError(f"{what} did not get there in {timeout}s: {status}") from None

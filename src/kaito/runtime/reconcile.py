"""The reconcile contract: what a reconciler gets (`Request`) and what it returns.

A reconciler is ``async def reconcile(req: Request) -> Result | None``. It reads the
current state (from caches or the server), moves the world one step closer to the
desired state, and says when to look again:

- return ``None`` or ``Result()``: done; the item's backoff is forgotten.
- ``Result(requeue_after=d)``: look again in ``d`` seconds (backoff forgotten).
- ``Result(requeue=True)``: look again after the item's rate-limited backoff.
- raise any exception: an error; retried with rate-limited backoff. A ``requeue_after``
  cannot be returned together with an error (it is ignored, as upstream).
- raise `TerminalError`: an error that retrying cannot fix (e.g. an invalid spec); not
  requeued until the object changes again.

The reconciler never learns which event caused the call: that is the level-based stance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Request(NamedTuple):
    """Which object to reconcile. ``namespace`` is "" for cluster-scoped objects.

    A NamedTuple, not a dataclass: it is hashed on every queue operation.
    """

    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def from_key(cls, key: str) -> Request:
        ns, sep, name = key.partition("/")
        return cls(ns, name) if sep else cls("", ns)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True)
class Result:
    requeue: bool = False
    """Requeue with the item's rate-limited backoff. Default False."""
    requeue_after: float = 0.0
    """Requeue after this many seconds (takes precedence over ``requeue``). Default 0: no."""

    @property
    def is_zero(self) -> bool:
        return not self.requeue and self.requeue_after <= 0


class TerminalError(Exception):
    """A reconcile error that retrying will not fix: logged and counted, not requeued."""

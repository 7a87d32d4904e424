"""Event handlers: turn an informer's events into `Request`s on a controller's queue.

- `EnqueueRequestForObject`: the object itself (``for_``).
- `EnqueueRequestForOwner`: the object's controller owner of a given group/kind
  (``owns``). Another group's kind of the same name is not the owner. When an update
  re-parents an object, both the old and the new owner are enqueued.
- `EnqueueRequestsFromMapFunc`: whatever a function maps the object to (``watches``),
  run on the old and the new object of an update, de-duplicated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from kaito.runtime.meta import Obj
from kaito.runtime.reconcile import Request


class Enqueue(Protocol):
    def __call__(self, item: Request, /) -> None: ...


class Handler(Protocol):
    """Maps events to requests; ``add`` is the queue's add."""

    def create(self, obj: Obj, add: Enqueue) -> None: ...

    def update(self, old: Obj, new: Obj, add: Enqueue) -> None: ...

    def delete(self, obj: Obj, add: Enqueue) -> None: ...


def request_for(obj: Obj) -> Request:
    meta = obj["metadata"]
    return Request(meta.get("namespace") or "", meta["name"])


class EnqueueRequestForObject:
    def create(self, obj: Obj, add: Enqueue) -> None:
        add(request_for(obj))

    def update(self, old: Obj, new: Obj, add: Enqueue) -> None:
        add(request_for(new))

    def delete(self, obj: Obj, add: Enqueue) -> None:
        add(request_for(obj))


def _group_of(api_version: str) -> str:
    group, _, _version = api_version.rpartition("/")
    return group


class EnqueueRequestForOwner:
    """Enqueue the owner of kind ``owner_kind`` in group ``owner_group``.

    Args:
        owner_namespaced: whether the owner kind is namespaced (its request takes the
            object's namespace) or cluster-scoped (namespace ""). Default True.
        only_controller: only the owner reference with ``controller: true``; default True
            (controller-runtime's ``OnlyControllerOwner``, what ``owns`` uses).
    """

    def __init__(
        self,
        owner_group: str,
        owner_kind: str,
        *,
        owner_namespaced: bool = True,
        only_controller: bool = True,
    ) -> None:
        self.group = owner_group
        self.kind = owner_kind
        self.namespaced = owner_namespaced
        self.only_controller = only_controller

    def owners(self, obj: Obj) -> list[Request]:
        meta = obj["metadata"]
        ns = (meta.get("namespace") or "") if self.namespaced else ""
        out = []
        for ref in meta.get("ownerReferences") or ():
            if self.only_controller and not ref.get("controller"):
                continue
            if ref.get("kind") != self.kind or _group_of(ref.get("apiVersion", "")) != self.group:
                continue
            out.append(Request(ns, ref["name"]))
        return out

    def create(self, obj: Obj, add: Enqueue) -> None:
        for r in self.owners(obj):
            add(r)

    def update(self, old: Obj, new: Obj, add: Enqueue) -> None:
        for r in dict.fromkeys([*self.owners(old), *self.owners(new)]):
            add(r)

    def delete(self, obj: Obj, add: Enqueue) -> None:
        for r in self.owners(obj):
            add(r)


MapFunc = Callable[[Obj], Iterable[Request]]


class EnqueueRequestsFromMapFunc:
    def __init__(self, fn: MapFunc) -> None:
        self.fn = fn

    def create(self, obj: Obj, add: Enqueue) -> None:
        for r in dict.fromkeys(self.fn(obj)):
            add(r)

    def update(self, old: Obj, new: Obj, add: Enqueue) -> None:
        for r in dict.fromkeys([*self.fn(old), *self.fn(new)]):
            add(r)

    def delete(self, obj: Obj, add: Enqueue) -> None:
        for r in dict.fromkeys(self.fn(obj)):
            add(r)

"""An indexed store of raw objects, the read side of an informer.

Objects are kept keyed ``namespace/name`` as their compact JSON (orjson bytes), and
every read decodes a fresh dict. Why not keep the decoded dicts: a Python dict tree
costs about five times the object's JSON size, compact bytes about one and a half
(RUNTIME.md asks for at most 2x); decoding a small object costs microseconds, far below
one API call. A welcome side effect: readers own what they get and may mutate it, unlike
client-go's listers whose objects are shared.

Named indexes map an index value to the set of keys whose object produces it;
``namespace`` and ``owner`` (owner-reference UIDs) are always present. The store is only
written by its informer, on the event loop's thread, so it needs no locks.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable

import orjson

from kaito.runtime.labels import Selector, parse_selector
from kaito.runtime.meta import Obj
from kaito.runtime.resource import object_key

IndexFunc = Callable[[Obj], Iterable[str]]

NAMESPACE_INDEX = "namespace"
OWNER_INDEX = "owner"


def index_by_namespace(obj: Obj) -> Iterable[str]:
    ns = obj["metadata"].get("namespace")
    return (ns,) if ns else ()


def index_by_owner_uid(obj: Obj) -> Iterable[str]:
    return [ref["uid"] for ref in obj["metadata"].get("ownerReferences") or () if "uid" in ref]


def index_by_label(label: str) -> IndexFunc:
    """An index on one label's value, e.g. ``index_by_label("kaito.sh/workspace")``."""

    def index(obj: Obj) -> Iterable[str]:
        value = (obj["metadata"].get("labels") or {}).get(label)
        return (value,) if value is not None else ()

    return index


class Cache:
    """``ns/name`` -> object, plus named indexes. See the module docstring for the rules."""

    def __init__(self, indexers: dict[str, IndexFunc] | None = None) -> None:
        self._items: dict[str, bytes] = {}
        self._indexers: dict[str, IndexFunc] = {
            NAMESPACE_INDEX: index_by_namespace,
            OWNER_INDEX: index_by_owner_uid,
            **(indexers or {}),
        }
        self._indices: dict[str, dict[str, set[str]]] = {name: {} for name in self._indexers}
        self._synced = False

    # -- reads ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    @property
    def has_synced(self) -> bool:
        """True once the first LIST has been stored: reads before that see a partial world."""
        return self._synced

    def get(self, key: str) -> Obj | None:
        raw = self._items.get(key)
        return None if raw is None else _decode(raw)

    def get_by_name(self, name: str, namespace: str | None = None) -> Obj | None:
        return self.get(f"{namespace}/{name}" if namespace else name)

    def keys(self) -> list[str]:
        return list(self._items)

    def by_index(self, index: str, value: str) -> list[Obj]:
        keys = self._indices[index].get(value, ())
        return [_decode(self._items[k]) for k in keys]

    def list(
        self, namespace: str | None = None, *, label_selector: str | Selector | None = None
    ) -> list[Obj]:
        """Objects in ``namespace`` (all when None) matching ``label_selector``."""
        items: Iterable[Obj] = (
            self.by_index(NAMESPACE_INDEX, namespace) if namespace else self.all()
        )
        if label_selector is None:
            return list(items)
        selector = (
            parse_selector(label_selector) if isinstance(label_selector, str) else label_selector
        )
        return [o for o in items if selector.matches(o["metadata"].get("labels") or {})]

    def all(self) -> builtins.list[Obj]:
        return [_decode(raw) for raw in self._items.values()]

    def add_indexer(self, name: str, func: IndexFunc) -> None:
        """Add an index; existing objects are indexed at once."""
        if name in self._indexers:
            raise ValueError(f"index {name!r} already exists")
        self._indexers[name] = func
        self._indices[name] = {}
        for key, raw in self._items.items():
            self._index_one(name, func, key, _decode(raw))

    # -- writes (the informer's) -----------------------------------------------------------

    def upsert(self, obj: Obj) -> Obj | None:
        """Store ``obj``; return the object it replaced, if any."""
        key = object_key(obj)
        old = self.get(key)
        if old is not None:
            self._unindex(key, old)
        self._items[key] = orjson.dumps(obj)
        for name, func in self._indexers.items():
            self._index_one(name, func, key, obj)
        return old

    def delete(self, key: str) -> Obj | None:
        raw = self._items.pop(key, None)
        if raw is None:
            return None
        old = _decode(raw)
        self._unindex(key, old)
        return old

    def replace(
        self, objs: Iterable[Obj]
    ) -> tuple[builtins.list[Obj], builtins.list[tuple[Obj, Obj]], builtins.list[Obj]]:
        """Make the store equal to ``objs`` (a relist); return (added, updated, deleted).

        ``updated`` holds (old, new) pairs whose resourceVersion changed. ``deleted``
        holds the last known state of objects that vanished while we were not watching:
        these are the tombstones a relist after 410 Gone must report.
        """
        added: builtins.list[Obj] = []
        updated: builtins.list[tuple[Obj, Obj]] = []
        seen: set[str] = set()
        for obj in objs:
            key = object_key(obj)
            seen.add(key)
            old = self.upsert(obj)
            if old is None:
                added.append(obj)
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                updated.append((old, obj))
        deleted = [_decode(raw) for k, raw in self._items.items() if k not in seen]
        for obj in deleted:
            self.delete(object_key(obj))
        self._synced = True
        return added, updated, deleted

    def _index_one(self, name: str, func: IndexFunc, key: str, obj: Obj) -> None:
        index = self._indices[name]
        for value in func(obj):
            index.setdefault(value, set()).add(key)

    def _unindex(self, key: str, obj: Obj) -> None:
        for name, func in self._indexers.items():
            index = self._indices[name]
            for value in func(obj):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]


def _decode(raw: bytes) -> Obj:
    obj: Obj = orjson.loads(raw)
    return obj

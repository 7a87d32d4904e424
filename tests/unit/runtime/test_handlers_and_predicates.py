"""Mapping events to requests (RUNTIME.md semantics 11)."""

from __future__ import annotations

from typing import Any

from kaito.runtime.controller import _Source
from kaito.runtime.handler import (
    EnqueueRequestForObject,
    EnqueueRequestForOwner,
    EnqueueRequestsFromMapFunc,
)
from kaito.runtime.predicate import (
    GenerationChanged,
    LabelChanged,
    Predicate,
    ResourceVersionChanged,
    and_,
    not_,
    or_,
)
from kaito.runtime.reconcile import Request


def obj(
    name: str,
    *,
    ns: str = "default",
    owners: list[dict[str, Any]] | None = None,
    gen: int = 1,
    rv: str = "1",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "ownerReferences": owners or [],
            "generation": gen,
            "resourceVersion": rv,
            "labels": labels or {},
        }
    }


def owner(
    kind: str, name: str, api_version: str = "kaito.sh/v1beta1", controller: bool = True
) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": f"u-{name}",
        "controller": controller,
    }


class Sink(list[Request]):
    def __call__(self, item: Request) -> None:
        self.append(item)


def test_owns_enqueues_only_the_controller_owner() -> None:
    h = EnqueueRequestForOwner("kaito.sh", "Workspace")
    add = Sink()
    h.create(
        obj("d", owners=[owner("Workspace", "ws-a", controller=False), owner("Workspace", "ws-b")]),
        add,
    )
    assert add == [Request("default", "ws-b")]


def test_owns_ignores_the_same_kind_in_another_group() -> None:
    h = EnqueueRequestForOwner("kaito.sh", "Workspace")
    add = Sink()
    h.create(obj("d", owners=[owner("Workspace", "imposter", api_version="other.io/v1")]), add)
    assert add == []


def test_owns_cluster_scoped_owner_gets_empty_namespace() -> None:
    h = EnqueueRequestForOwner("karpenter.sh", "Machine", owner_namespaced=False)
    add = Sink()
    h.create(obj("pod", owners=[owner("Machine", "m1", api_version="karpenter.sh/v1alpha5")]), add)
    assert add == [Request("", "m1")]


def test_reparenting_enqueues_both_owners_once_each() -> None:
    h = EnqueueRequestForOwner("kaito.sh", "Workspace")
    add = Sink()
    h.update(
        obj("d", owners=[owner("Workspace", "old")]),
        obj("d", owners=[owner("Workspace", "new")]),
        add,
    )
    assert add == [Request("default", "old"), Request("default", "new")]
    add.clear()
    same = obj("d", owners=[owner("Workspace", "x")])
    h.update(same, same, add)
    assert add == [Request("default", "x")]


def test_map_function_runs_on_old_and_new_and_deduplicates() -> None:
    seen: list[str] = []

    def fn(o: dict[str, Any]) -> list[Request]:
        seen.append(o["metadata"]["resourceVersion"])
        return [Request("default", v) for v in o["metadata"]["labels"].values()]

    h = EnqueueRequestsFromMapFunc(fn)
    add = Sink()
    h.update(
        obj("n", rv="1", labels={"a": "ws1", "b": "ws2"}),
        obj("n", rv="2", labels={"a": "ws2", "b": "ws3"}),
        add,
    )
    assert seen == ["1", "2"]
    assert add == [Request("default", "ws1"), Request("default", "ws2"), Request("default", "ws3")]


def test_generation_changed_drops_status_only_updates() -> None:
    add = Sink()
    src = _Source(EnqueueRequestForObject(), [GenerationChanged()], add)
    src.on_update(obj("w", gen=1, rv="1"), obj("w", gen=1, rv="2"))  # status write
    assert add == []
    src.on_update(obj("w", gen=1, rv="2"), obj("w", gen=2, rv="3"))  # spec change
    assert add == [Request("default", "w")]
    src.on_add(obj("w2"))
    src.on_delete(obj("w3"))
    assert add == [Request("default", "w"), Request("default", "w2"), Request("default", "w3")]


def test_predicate_combinators() -> None:
    old, new = obj("a", rv="1", labels={"x": "1"}), obj("a", rv="2", labels={"x": "1"})
    assert ResourceVersionChanged().update(old, new)
    assert not LabelChanged().update(old, new)
    assert not and_(ResourceVersionChanged(), LabelChanged()).update(old, new)
    assert or_(ResourceVersionChanged(), LabelChanged()).update(old, new)
    assert not_(LabelChanged()).update(old, new)
    assert Predicate().update(old, new)
    assert not ResourceVersionChanged().update(old, old), "a resync (same object) is filtered"

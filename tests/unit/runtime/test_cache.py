"""The informer's store: reads, indexes, selectors, relist deltas."""

from __future__ import annotations

from typing import Any

import pytest

from kaito.runtime.cache import OWNER_INDEX, Cache, index_by_label


def obj(
    name: str,
    ns: str | None = "a",
    rv: str = "1",
    labels: dict[str, str] | None = None,
    owner_uid: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv, "labels": labels or {}}
    if ns:
        meta["namespace"] = ns
    if owner_uid:
        meta["ownerReferences"] = [{"uid": owner_uid, "kind": "Workspace", "name": "w"}]
    return {"kind": "ConfigMap", "metadata": meta}


def names(objs: list[dict[str, Any]]) -> set[str]:
    return {o["metadata"]["name"] for o in objs}


def test_list_all_namespaces_by_namespace_and_by_selector() -> None:
    c = Cache()
    c.upsert(obj("x", "a", labels={"tier": "gpu"}))
    c.upsert(obj("y", "b", labels={"tier": "cpu"}))
    c.upsert(obj("node", None, labels={"tier": "gpu"}))
    assert names(c.list()) == {"x", "y", "node"}
    assert names(c.list("a")) == {"x"}
    assert names(c.list(label_selector="tier=gpu")) == {"x", "node"}
    assert names(c.list(label_selector="tier in (gpu,cpu),!missing")) == {"x", "y", "node"}
    assert c.get("node") is not None and c.get_by_name("y", "b") is not None
    assert c.get("a/none") is None


def test_reads_return_private_copies() -> None:
    c = Cache()
    c.upsert(obj("x"))
    got = c.get("a/x")
    assert got is not None
    got["metadata"]["labels"]["mutated"] = "yes"
    again = c.get("a/x")
    assert again is not None and "mutated" not in again["metadata"]["labels"]


def test_indexes_follow_updates_and_deletes() -> None:
    c = Cache({"tier": index_by_label("tier")})
    c.upsert(obj("x", labels={"tier": "gpu"}, owner_uid="u1"))
    assert names(c.by_index("tier", "gpu")) == {"x"}
    assert names(c.by_index(OWNER_INDEX, "u1")) == {"x"}
    old = c.upsert(obj("x", rv="2", labels={"tier": "cpu"}))
    assert old is not None and old["metadata"]["resourceVersion"] == "1"
    assert c.by_index("tier", "gpu") == [] and names(c.by_index("tier", "cpu")) == {"x"}
    assert c.by_index(OWNER_INDEX, "u1") == []
    assert c.delete("a/x") is not None
    assert c.by_index("tier", "cpu") == [] and len(c) == 0
    c.add_indexer("late", index_by_label("tier"))
    with pytest.raises(ValueError, match="already exists"):
        c.add_indexer("late", index_by_label("tier"))


def test_replace_reports_added_updated_and_tombstones() -> None:
    c = Cache()
    c.upsert(obj("keep", rv="1"))
    c.upsert(obj("change", rv="1"))
    c.upsert(obj("gone", rv="1"))
    assert not c.has_synced
    added, updated, deleted = c.replace(
        [obj("keep", rv="1"), obj("change", rv="2"), obj("new", rv="3")]
    )
    assert names(added) == {"new"}
    assert [
        (o["metadata"]["resourceVersion"], n["metadata"]["resourceVersion"]) for o, n in updated
    ] == [("1", "2")]
    assert names(deleted) == {"gone"}, "objects missing from the relist are reported as deleted"
    assert sorted(c.keys()) == ["a/change", "a/keep", "a/new"]
    assert c.has_synced

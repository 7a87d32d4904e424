"""Conditions (metav1.Condition rules), node qualification and ordering, revision hash."""

from __future__ import annotations

from typing import Any

import pytest

from kaito.api.workspace import Workspace
from kaito.controllers.workspace.nodes.selection import (
    gpu_capacity,
    needs_accelerator_label,
    ordered_candidates,
    qualifies,
)
from kaito.controllers.workspace.reconcile import revision_hash
from kaito.controllers.workspace.status.draft import WorkspaceStatusDraft as StatusDraft
from kaito.runtime import conditions as status_mod

Obj = dict[str, Any]


def test_last_transition_time_changes_only_when_the_status_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(status_mod, "now_rfc3339", lambda: "T1")
    draft = StatusDraft(None, generation=3)
    assert draft.set("ResourceReady", "False", "WaitingForNodes", "0 of 1")
    monkeypatch.setattr(status_mod, "now_rfc3339", lambda: "T2")
    assert draft.set("ResourceReady", "False", "QuotaExceeded", "quota")
    cond = draft.get("ResourceReady")
    assert cond is not None and cond["lastTransitionTime"] == "T1"
    assert cond["reason"] == "QuotaExceeded" and cond["observedGeneration"] == 3
    assert draft.set("ResourceReady", "True", "NodesReady", "ok")
    assert draft.get("ResourceReady")["lastTransitionTime"] == "T2"  # type: ignore[index]
    assert not draft.set("ResourceReady", "True", "NodesReady", "ok")


def test_an_unchanged_status_is_not_written() -> None:
    cond = {
        "type": "MachineReady",
        "status": "True",
        "reason": "MachinesReady",
        "message": "1 Machine(s) Ready",
        "lastTransitionTime": "T0",
    }
    draft = StatusDraft({"conditions": [cond], "workerNodes": ["n1"]})
    draft.set("MachineReady", "True", "MachinesReady", "1 Machine(s) Ready")
    draft.set_worker_nodes(["n1"])
    assert not draft.changed
    draft.set_worker_nodes(["n2"])
    assert draft.changed
    patch = draft.patch("42")
    assert patch == {
        "status": {"conditions": [cond], "workerNodes": ["n2"]},
        "metadata": {"resourceVersion": "42"},
    }


def test_other_conditions_are_kept_in_place() -> None:
    draft = StatusDraft(
        {
            "conditions": [
                {"type": "A", "status": "True", "reason": "r", "message": "m"},
                {"type": "B", "status": "True", "reason": "r", "message": "m"},
            ]
        }
    )
    draft.set("A", "False", "x", "y")
    assert [c["type"] for c in draft.data["conditions"]] == ["A", "B"]
    assert draft.remove("B") and not draft.remove("B")


def workspace(preferred: list[str] | None = None, workers: list[str] | None = None) -> Workspace:
    return Workspace.model_validate(
        {
            "metadata": {"name": "phi", "namespace": "ns"},
            "resource": {
                "instanceType": "Standard_NC6s_v3",
                "labelSelector": {
                    "matchLabels": {"apps": "phi"},
                    "matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}],
                },
                "preferredNodes": preferred or [],
            },
            "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
            "status": {"workerNodes": workers or []},
        }
    )


def node(
    name: str,
    *,
    ready: bool = True,
    instance_type: str = "Standard_NC6s_v3",
    gpus: str | None = "1",
    **labels: str,
) -> Obj:
    return {
        "metadata": {
            "name": name,
            "labels": {
                "apps": "phi",
                "node.kubernetes.io/instance-type": instance_type,
                **labels,
            },
        },
        "status": {
            "capacity": {"nvidia.com/gpu": gpus} if gpus else {},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_a_node_qualifies_when_ready_of_the_instance_type_and_matching_the_selector() -> None:
    ws = workspace()
    assert qualifies(ws, node("n"))
    assert qualifies(ws, node("n", instance_type="standard_nc6s_v3"))
    assert not qualifies(ws, node("n", ready=False))
    assert not qualifies(ws, node("n", instance_type="Standard_NC12s_v3"))
    assert not qualifies(ws, node("n", zone="b"))
    assert not qualifies(ws, node("n", apps="other"))
    deleting = node("n")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not qualifies(ws, deleting)


def test_preferred_nodes_come_first_then_current_workers_then_by_name() -> None:
    ws = workspace(preferred=["p2", "p1"], workers=["w"])
    nodes = [node(n) for n in ("a", "w", "p1", "z", "p2")] + [node("x", ready=False)]
    assert [n["metadata"]["name"] for n in ordered_candidates(ws, nodes)] == [
        "p2",
        "p1",
        "w",
        "a",
        "z",
    ]


def test_gpu_capacity_and_accelerator_label() -> None:
    assert gpu_capacity(node("n", gpus="4")) == 4
    assert gpu_capacity(node("n", gpus=None)) == 0
    assert gpu_capacity(node("n", gpus="bogus")) == 0
    assert needs_accelerator_label(node("n"))
    assert not needs_accelerator_label(node("n", accelerator="nvidia"))


def test_revision_hash_covers_resource_inference_and_tuning_only() -> None:
    base: Obj = {
        "metadata": {"name": "a", "resourceVersion": "1"},
        "resource": {"count": 1, "instanceType": "x"},
        "inference": {"preset": {"name": "p"}},
    }
    same = {**base, "metadata": {"name": "a", "resourceVersion": "2"}, "status": {"x": 1}}
    assert revision_hash(base) == revision_hash(same)
    reordered = {**base, "resource": {"instanceType": "x", "count": 1}}
    assert revision_hash(base) == revision_hash(reordered)
    changed = {**base, "inference": {"preset": {"name": "p"}, "adapters": [{"strength": "1"}]}}
    assert revision_hash(base) != revision_hash(changed)

"""Machine and NodeClaim names, shape and the MachineReady fold (pure functions)."""

from __future__ import annotations

import re
from typing import Any

from kaito.api.machine import Machine
from kaito.api.nodeclaim import NodeClaim
from kaito.api.workspace import Workspace
from kaito.controllers.workspace.nodes.machines import (
    build_machine,
    machine_name,
    manifest,
    summarize,
    workspace_of,
)
from kaito.controllers.workspace.nodes.provisioning import Mode, Provisioning

Obj = dict[str, Any]


def workspace(**resource: Any) -> Workspace:
    return Workspace.model_validate(
        {
            "metadata": {"name": "phi", "namespace": "team-a"},
            "resource": {
                "instanceType": "Standard_NC12s_v3",
                "labelSelector": {"matchLabels": {"apps": "phi-3"}},
                **resource,
            },
            "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
        }
    )


def machine(name: str, ready: str | None = None, **extra: Any) -> Machine:
    """A Machine as the cache holds it (a dict), read the way the controller reads it."""
    obj: Obj = {"metadata": {"name": name, **extra.pop("meta", {})}, "status": {}}
    if ready is not None:
        obj["status"]["conditions"] = [{"type": "Ready", "status": ready, **extra}]
        if ready == "True":
            obj["status"]["nodeName"] = f"node-{name}"
    return Machine.model_validate(obj)


def test_machine_names_are_deterministic_eleven_char_agent_pool_names() -> None:
    names = [machine_name("team-a", "phi", i) for i in range(4)]
    assert names == [machine_name("team-a", "phi", i) for i in range(4)]
    assert len(set(names)) == 4
    assert all(re.fullmatch(r"ws[0-9a-f]{9}", n) for n in names)
    assert machine_name("team-b", "phi", 0) != names[0]
    assert machine_name("team-a", "phi2", 0) != names[0]


def test_machine_body_has_the_documented_shape_and_parses_as_a_machine() -> None:
    body = manifest(build_machine(workspace(), 1, storage="80Gi"))
    name = machine_name("team-a", "phi", 1)
    assert set(body) == {"apiVersion", "kind", "metadata", "spec"}  # no status: the provisioner's
    assert (body["apiVersion"], body["kind"]) == ("karpenter.sh/v1alpha5", "Machine")
    assert body["metadata"] == {
        "name": name,
        "labels": {
            "karpenter.sh/provisioner-name": "default",
            "apps": "phi-3",
            "kaito.sh/workspace": "phi",
            "kaito.sh/workspacenamespace": "team-a",
        },
    }
    m = Machine.model_validate(body)
    assert m.instance_type == "Standard_NC12s_v3"
    assert m.spec.machine_template_ref is not None and m.spec.machine_template_ref.name == name
    reqs = {r.key: r.values for r in m.spec.requirements}
    assert reqs == {
        "node.kubernetes.io/instance-type": ["Standard_NC12s_v3"],
        "karpenter.sh/provisioner-name": ["default"],
        "kaito.sh/machine-type": ["gpu"],
        "kubernetes.io/arch": ["amd64"],
        "kubernetes.io/os": ["linux"],
    }
    assert body["spec"]["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]
    assert body["spec"]["resources"] == {"requests": {"storage": "80Gi"}}
    assert set(body["spec"]) == {"machineTemplateRef", "requirements", "taints", "resources"}


def test_nodeclaim_body_has_karpenter_v1s_shape_and_parses_as_a_nodeclaim() -> None:
    claim = Provisioning(Mode.NODECLAIM).build(workspace(), 0, storage="80Gi")
    body = manifest(claim)
    assert set(body) == {"apiVersion", "kind", "metadata", "spec"}
    assert (body["apiVersion"], body["kind"]) == ("karpenter.sh/v1", "NodeClaim")
    assert body["metadata"] == {
        "name": machine_name("team-a", "phi", 0),
        "labels": {
            "karpenter.sh/nodepool": "kaito",
            "kaito.sh/machine-type": "gpu",
            "apps": "phi-3",
            "kaito.sh/workspace": "phi",
            "kaito.sh/workspacenamespace": "team-a",
        },
    }
    assert body["spec"] == {
        "nodeClassRef": {
            "group": "karpenter.azure.com",
            "kind": "AKSNodeClass",
            "name": "image-family-ubuntu",
        },
        "requirements": [
            {
                "key": "node.kubernetes.io/instance-type",
                "operator": "In",
                "values": ["Standard_NC12s_v3"],
            },
            {"key": "karpenter.sh/nodepool", "operator": "In", "values": ["kaito"]},
            {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
        ],
        "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
        "resources": {"requests": {"storage": "80Gi"}},
    }
    assert NodeClaim.model_validate(body) == claim


def test_a_ready_nodeclaim_folds_like_a_ready_machine() -> None:
    obj = {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaim",
        "metadata": {"name": "a"},
        "spec": {"expireAfter": "720h"},  # Karpenter's own fields pass through unread
        "status": {
            "nodeName": "node-a",
            "conditions": [
                {"type": "Launched", "status": "True"},
                {"type": "Ready", "status": "True", "reason": "Ready", "message": ""},
            ],
        },
    }
    claim = Provisioning(Mode.NODECLAIM).parse(obj)
    assert isinstance(claim, NodeClaim)
    s = summarize([claim], ["a"])
    assert (s.status, s.reason, s.ready_nodes) == ("True", "MachinesReady", ("node-a",))


def test_workspace_labels_cannot_be_overridden_by_match_labels() -> None:
    ws = workspace(labelSelector={"matchLabels": {"kaito.sh/workspace": "other"}})
    assert build_machine(ws, 0, storage="1Gi").metadata.labels["kaito.sh/workspace"] == "phi"


def test_workspace_of_needs_both_labels() -> None:
    labels = {"kaito.sh/workspace": "phi", "kaito.sh/workspacenamespace": "ns"}
    assert workspace_of({"metadata": {"labels": labels}}) == ("ns", "phi")
    assert workspace_of({"metadata": {"labels": {"kaito.sh/workspace": "phi"}}}) is None
    assert workspace_of({"metadata": {}}) is None


def test_summary_is_true_when_every_wanted_machine_is_ready() -> None:
    s = summarize([machine("a", "True"), machine("b", "True")], ["a", "b"])
    assert (s.status, s.reason) == ("True", "MachinesReady")
    assert s.ready_nodes == ("node-a", "node-b")


def test_summary_surfaces_a_failed_machines_reason_and_message() -> None:
    failed = machine("b", "False", reason="QuotaExceeded", message="exceeding approved quota")
    s = summarize([machine("a", "True"), failed], ["a", "b"])
    assert (s.status, s.reason) == ("False", "QuotaExceeded")
    assert s.message == "Machine b is not ready: exceeding approved quota"
    assert s.ready_nodes == ("node-a",)


def test_summary_is_unknown_while_machines_are_missing_or_provisioning() -> None:
    s = summarize([machine("a", "Unknown")], ["a", "b"])
    assert (s.status, s.reason) == ("Unknown", "MachinesProvisioning")
    assert "a, b" in s.message and "0 of 2 Ready" in s.message


def test_a_deleting_machine_is_not_ready() -> None:
    m = machine("a", "True", meta={"deletionTimestamp": "2026-01-01T00:00:00Z"})
    s = summarize([m], ["a"])
    assert s.status == "Unknown" and s.ready_nodes == ()


def test_no_machines_needed() -> None:
    s = summarize([], [])
    assert (s.status, s.reason) == ("True", "NoMachinesNeeded")

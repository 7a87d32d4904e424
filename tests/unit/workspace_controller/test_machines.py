"""Machine names, shape and the MachineReady fold (pure functions)."""

from __future__ import annotations

import re
from typing import Any

from kaito.api.machine import Machine
from kaito.api.workspace import Workspace
from kaito.controllers.workspace.nodes.machines import (
    machine_body,
    machine_name,
    summarize,
    workspace_of,
)

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


def machine(name: str, ready: str | None = None, **extra: Any) -> Obj:
    obj: Obj = {"metadata": {"name": name, **extra.pop("meta", {})}, "status": {}}
    if ready is not None:
        obj["status"]["conditions"] = [{"type": "Ready", "status": ready, **extra}]
        if ready == "True":
            obj["status"]["nodeName"] = f"node-{name}"
    return obj


def test_machine_names_are_deterministic_eleven_char_agent_pool_names() -> None:
    names = [machine_name("team-a", "phi", i) for i in range(4)]
    assert names == [machine_name("team-a", "phi", i) for i in range(4)]
    assert len(set(names)) == 4
    assert all(re.fullmatch(r"ws[0-9a-f]{9}", n) for n in names)
    assert machine_name("team-b", "phi", 0) != names[0]
    assert machine_name("team-a", "phi2", 0) != names[0]


def test_machine_body_has_the_documented_shape_and_parses_as_a_machine() -> None:
    body = machine_body(workspace(), 1, storage="80Gi")
    name = machine_name("team-a", "phi", 1)
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


def test_workspace_labels_cannot_be_overridden_by_match_labels() -> None:
    ws = workspace(labelSelector={"matchLabels": {"kaito.sh/workspace": "other"}})
    assert machine_body(ws, 0, storage="1Gi")["metadata"]["labels"]["kaito.sh/workspace"] == "phi"


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

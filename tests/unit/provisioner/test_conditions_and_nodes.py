"""Status conditions (karpenter's rules) and the Node sync/initialization plans."""

from __future__ import annotations

from typing import Any

from kaito.api.machine import Machine
from kaito.provisioner.conditions import MachineStatusDraft as StatusDraft
from kaito.provisioner.lifecycle import machine_state
from kaito.provisioner.nodes import initialization_gaps, plan_registration

Obj = dict[str, Any]


def test_ready_follows_the_three_conditions() -> None:
    s = StatusDraft(None)
    assert not s.changed
    assert s.set("MachineLaunched", "True", "Launched")
    ready = s.get("Ready")
    assert ready is not None and ready["status"] == "Unknown"
    s.set("MachineRegistered", "False", "RegistrationTimeout", "no node")
    ready = s.get("Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"], ready["message"], ready["severity"]) == (
        "False",
        "RegistrationTimeout",
        "no node",
        "Error",
    )
    s.set("MachineRegistered", "True", "Registered")
    s.set("MachineInitialized", "True", "Initialized")
    assert s.is_true("Ready")
    assert [c["type"] for c in s.conditions] == [
        "MachineLaunched",
        "MachineRegistered",
        "MachineInitialized",
        "Ready",
    ]
    assert s.changed


def test_transition_time_is_kept_while_the_status_stays() -> None:
    old = {
        "conditions": [
            {
                "type": "MachineLaunched",
                "status": "False",
                "severity": "Error",
                "reason": "QuotaExceeded",
                "message": "a",
                "lastTransitionTime": "2020-01-01T00:00:00Z",
            },
        ]
    }
    s = StatusDraft(old)
    assert not s.set("MachineLaunched", "False", "QuotaExceeded", "a") or s.get("Ready")
    s.set("MachineLaunched", "False", "SkuNotAvailable", "b")
    cond = s.get("MachineLaunched")
    assert cond is not None and cond["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    s.set("MachineLaunched", "True", "Launched")
    cond = s.get("MachineLaunched")
    assert cond is not None and cond["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_setting_the_same_condition_twice_changes_nothing() -> None:
    s = StatusDraft(None)
    s.set("MachineLaunched", "False", "QuotaExceeded", "m")
    written = StatusDraft(s.data)
    assert not written.set("MachineLaunched", "False", "QuotaExceeded", "m")
    assert not written.changed


def machine(**spec: Any) -> Machine:
    return Machine.model_validate(
        {
            "metadata": {"name": "m1", "labels": {"kaito.sh/workspace": "ws"}},
            "spec": {
                "requirements": [
                    {
                        "key": "node.kubernetes.io/instance-type",
                        "operator": "In",
                        "values": ["Standard_NC6s_v3"],
                    }
                ],
                "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
                **spec,
            },
        }
    )


def node(
    *, ready: bool = True, taints: list[Obj] | None = None, gpus: str | None = "1", **labels: str
) -> Obj:
    allocatable = {"cpu": "6"}
    if gpus is not None:
        allocatable["nvidia.com/gpu"] = gpus
    return {
        "metadata": {"name": "n1", "resourceVersion": "7", "labels": {"agentpool": "m1", **labels}},
        "spec": {
            "taints": taints
            if taints is not None
            else [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]
        },
        "status": {
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_registration_adds_labels_and_startup_taints_once() -> None:
    m = machine(startupTaints=[{"key": "init", "effect": "NoSchedule"}])
    change = plan_registration(m, node())
    assert change.labels == {"kaito.sh/workspace": "ws", "karpenter.sh/registered": "true"}
    assert change.taints is not None and [t["key"] for t in change.taints] == ["sku", "init"]
    assert change.patch("7") == {
        "metadata": {"resourceVersion": "7", "labels": change.labels},
        "spec": {"taints": change.taints},
    }
    # Registered already and the agent removed its taint: nothing to re-add.
    registered = node(**{"kaito.sh/workspace": "ws", "karpenter.sh/registered": "true"})
    assert not plan_registration(m, registered)


def test_initialization_waits_for_ready_taints_and_gpus() -> None:
    m = machine(startupTaints=[{"key": "init", "effect": "NoSchedule"}])
    assert initialization_gaps(m, node(ready=False))[0] == "NodeNotReady"  # type: ignore[index]
    not_ready_taint = [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]
    assert initialization_gaps(m, node(taints=not_ready_taint))[0] == "NodeNotReady"  # type: ignore[index]
    gap = initialization_gaps(m, node(taints=[{"key": "init", "effect": "NoSchedule"}]))
    assert gap is not None and gap[0] == "StartupTaintsExist" and "init:NoSchedule" in gap[1]
    gap = initialization_gaps(m, node(gpus="0"))
    assert gap is not None and gap[0] == "ResourceNotRegistered" and "nvidia.com/gpu" in gap[1]
    assert initialization_gaps(m, node()) is None
    # Requested resources other than storage must be allocatable too.
    wants_fpga = machine(resources={"requests": {"storage": "64Gi", "example.com/fpga": "1"}})
    gap = initialization_gaps(wants_fpga, node())
    assert gap is not None and "example.com/fpga" in gap[1]


def test_machine_state_for_the_metric() -> None:
    def with_conditions(**conds: str) -> Machine:
        return Machine.model_validate(
            {
                "metadata": {"name": "x"},
                "status": {"conditions": [{"type": t, "status": s} for t, s in conds.items()]},
            }
        )

    assert machine_state(with_conditions()) == "launching"
    assert machine_state(with_conditions(MachineLaunched="False")) == "failed"
    assert machine_state(with_conditions(MachineLaunched="True")) == "registering"
    assert (
        machine_state(with_conditions(MachineLaunched="True", MachineRegistered="True"))
        == "initializing"
    )
    assert machine_state(with_conditions(Ready="True")) == "ready"
    deleting = {"name": "x", "deletionTimestamp": "2024-05-01T10:00:00Z"}
    assert machine_state(Machine.model_validate({"metadata": deleting})) == "deleting"


def test_a_draft_of_a_machines_status_is_what_the_apiserver_sent() -> None:
    """Model defaults (an empty reason, empty capacity) must not read as a change: the
    provisioner would write the status on every reconcile."""
    status = {
        "nodeName": "aks-ws1-0",
        "conditions": [
            {
                "type": "MachineLaunched",
                "status": "True",
                "lastTransitionTime": "2024-05-01T10:00:00Z",
            },
            {"type": "Ready", "status": "Unknown", "reason": "Launching"},
        ],
    }
    m = Machine.model_validate({"metadata": {"name": "ws1"}, "status": status})
    draft = StatusDraft.of(m)
    assert draft.data == status
    assert not draft.set("MachineLaunched", "True")
    assert not draft.changed

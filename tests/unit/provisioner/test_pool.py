"""Machine -> agent pool: validation names the field; the PUT body is what PROVISIONER.md says."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kaito.api.machine import Machine
from kaito.provisioner.azure import AgentPool
from kaito.provisioner.pool import (
    is_kaito_pool,
    parse_creation_timestamp,
    pool_spec,
    validate,
)


def machine(
    name: str = "ws1a2b3c",
    *,
    vm: str | None = "Standard_NC12s_v3",
    storage: Any = "120Gi",
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> Machine:
    reqs = []
    if vm is not None:
        reqs.append({"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [vm]})
    resources = {"requests": {"storage": storage}} if storage is not None else {}
    return Machine.model_validate(
        {
            "metadata": {
                "name": name,
                "labels": {"kaito.sh/workspace": "ws", "kaito.sh/workspacenamespace": "default"},
                "annotations": annotations or {},
                "creationTimestamp": "2024-05-06T07:08:09Z",
            },
            "spec": {"requirements": reqs, "resources": resources, **spec},
        }
    )


def test_a_valid_machine_has_no_problems() -> None:
    assert validate(machine()) == []


@pytest.mark.parametrize(
    ("m", "reason", "words"),
    [
        (machine("ws-1"), "InvalidMachineName", 'metadata.name "ws-1"'),
        (machine("toolongname123"), "InvalidMachineName", "^[a-z][a-z0-9]{0,11}$"),
        (machine("1abc"), "InvalidMachineName", "starting with a letter"),
        (machine(vm=None), "InstanceTypeMissing", "node.kubernetes.io/instance-type"),
        (machine(vm="m5.large"), "InvalidInstanceType", "is not an Azure VM size"),
        (machine(storage=None), "InvalidStorage", "spec.resources.requests.storage is required"),
        (machine(storage="0"), "InvalidStorage", 'must be greater than 0, got "0"'),
        (machine(storage=0), "InvalidStorage", "must be greater than 0"),
        (machine(storage="-5Gi"), "InvalidStorage", "must be greater than 0"),
        (machine(storage="10Gi"), "InvalidStorage", "30 to 2048 GiB"),
        (machine(storage="4Ti"), "InvalidStorage", "30 to 2048 GiB"),
        (
            machine(annotations={"kaito.sh/node-image-family": "windows"}),
            "InvalidNodeImageFamily",
            "must be one of azurelinux, ubuntu",
        ),
    ],
)
def test_validation_names_the_field_and_the_reason(m: Machine, reason: str, words: str) -> None:
    [problem] = validate(m)
    assert problem.reason == reason
    assert words in problem.message


def test_every_problem_is_reported() -> None:
    reasons = [p.reason for p in validate(machine("Bad_Name", vm=None, storage="0"))]
    assert reasons == ["InvalidMachineName", "InstanceTypeMissing", "InvalidStorage"]


def test_gpu_pool_spec() -> None:
    spec = pool_spec(
        machine(
            storage="100G",  # decimal: 93.1 GiB, rounded up
            taints=[{"key": "team", "value": "a", "effect": "NoExecute"}],
        )
    )
    assert spec.name == "ws1a2b3c" and spec.vm_size == "Standard_NC12s_v3" and spec.count == 1
    assert spec.os_disk_size_gb == 94
    assert spec.os_sku == "Ubuntu"
    assert spec.node_taints == ("sku=gpu:NoSchedule", "team=a:NoExecute")
    assert spec.node_labels == {
        "kaito.sh/workspace": "ws",
        "kaito.sh/workspacenamespace": "default",
        "kaito.sh/machine-type": "gpu",
        "kaito.sh/creation-timestamp": "2024-05-06T07-08-09Z",
    }
    body = spec.to_arm()["properties"]
    assert body["type"] == "VirtualMachineScaleSets" and body["osType"] == "Linux"
    assert body["osDiskSizeGB"] == 94 and body["vmSize"] == "Standard_NC12s_v3"


def test_cpu_pool_spec_and_azure_linux() -> None:
    spec = pool_spec(
        machine(vm="Standard_D8s_v3", annotations={"kaito.sh/node-image-family": "AzureLinux"})
    )
    assert spec.node_labels["kaito.sh/machine-type"] == "cpu"
    assert spec.node_taints == ()
    assert spec.os_sku == "AzureLinux"


def test_explicit_sku_taint_is_not_doubled() -> None:
    spec = pool_spec(machine(taints=[{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]))
    assert spec.node_taints == ("sku=gpu:NoSchedule",)


def test_creation_timestamp_label_round_trips() -> None:
    ts = parse_creation_timestamp("2024-05-06T07-08-09Z")
    assert ts == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC).timestamp()
    assert parse_creation_timestamp("yesterday") is None


def test_kaito_pools_are_recognised_by_their_labels() -> None:
    assert is_kaito_pool(AgentPool("a", "x", "Succeeded", node_labels={"kaito.sh/workspace": "w"}))
    assert is_kaito_pool(
        AgentPool("a", "x", "Succeeded", node_labels={"kaito.sh/machine-type": "gpu"})
    )
    assert not is_kaito_pool(AgentPool("nodepool1", "x", "Succeeded"))

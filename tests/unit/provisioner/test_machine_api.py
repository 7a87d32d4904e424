"""The Machine model and its generated CRD (the committed YAML must be what the model says)."""

from __future__ import annotations

import decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.api import crds
from kaito.api.machine import Machine
from kaito.runtime.quantity import parse_quantity

REPO = Path(__file__).resolve().parents[3]
CRD_PATH = REPO / "deploy" / "crds" / crds.MACHINE_CRD.file_name


def test_committed_crd_is_what_the_model_generates() -> None:
    assert CRD_PATH.read_text() == crds.MACHINE_CRD.render(), (
        "deploy/crds/karpenter.sh_machines.yaml is stale: run `python -m kaito.api.crds`"
    )


def test_check_command_fails_on_a_stale_file(tmp_path: Any) -> None:
    (tmp_path / crds.MACHINE_CRD.file_name).write_text("stale\n")
    assert crds.main(["--check", "--dir", str(tmp_path)]) == 1
    assert crds.main(["--dir", str(tmp_path)]) == 0
    assert crds.main(["--check", "--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(c.file_name for c in crds.CRDS)


def _walk(node: Any, path: str = "") -> list[str]:
    """Paths of schema nodes that are not structural (no type, or a leftover $ref/title)."""
    bad: list[str] = []
    if isinstance(node, dict):
        if "$ref" in node or "title" in node or "default" in node:
            bad.append(path)
        if "type" not in node and not node.get("x-kubernetes-int-or-string"):
            bad.append(path)
        for key in ("properties",):
            for name, child in node.get(key, {}).items():
                bad += _walk(child, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                bad += _walk(node[key], f"{path}[{key}]")
    return bad


def test_generated_schema_is_structural() -> None:
    doc = yaml.safe_load(CRD_PATH.read_text())
    version = doc["spec"]["versions"][0]
    assert doc["spec"]["scope"] == "Cluster"
    assert version["name"] == "v1alpha5" and version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []
    status = schema["properties"]["status"]["properties"]
    assert set(status) == {"providerID", "nodeName", "capacity", "allocatable", "conditions"}
    cond = status["conditions"]["items"]
    assert set(cond["properties"]) == {
        "type",
        "status",
        "severity",
        "lastTransitionTime",
        "reason",
        "message",
        "observedGeneration",
    }
    assert cond["required"] == ["type", "status"], "knative conditions may omit the rest"
    spec = schema["properties"]["spec"]["properties"]
    assert set(spec) >= {"requirements", "taints", "startupTaints", "resources", "kubelet"}
    assert "machineTemplateRef" in spec


def test_machine_parses_a_karpenter_machine_and_finds_its_instance_type() -> None:
    m = Machine.model_validate(
        {
            "apiVersion": "karpenter.sh/v1alpha5",
            "kind": "Machine",
            "metadata": {"name": "ws1a2b3c", "labels": {"kaito.sh/workspace": "ws"}},
            "spec": {
                "requirements": [
                    {"key": "karpenter.sh/provisioner-name", "operator": "In", "values": ["x"]},
                    {
                        "key": "node.kubernetes.io/instance-type",
                        "operator": "In",
                        "values": ["Standard_NC12s_v3", "Standard_NC24s_v3"],
                    },
                ],
                "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
                "resources": {"requests": {"storage": "120Gi"}},
                "machineTemplateRef": {"name": "ws1a2b3c"},
                "unknownField": 1,
            },
            "status": {
                "providerID": "azure:///x",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
    )
    assert m.instance_type == "Standard_NC12s_v3"
    assert m.spec.resources.requests["storage"] == "120Gi"
    assert m.status.provider_id == "azure:///x"
    assert m.is_true("Ready") and not m.is_true("MachineLaunched")
    dumped = m.model_dump(by_alias=True, exclude_none=True)
    assert dumped["status"]["providerID"] == "azure:///x"
    assert dumped["spec"]["machineTemplateRef"] == {"name": "ws1a2b3c"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("120Gi", 120 * 2**30),
        ("1Ki", 1024),
        ("500m", decimal.Decimal("0.5")),
        ("2", 2),
        ("1.5G", 1_500_000_000),
        ("1e3", 1000),
        (30, 30),
    ],
)
def test_parse_quantity(text: str | int, value: Any) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "12XB", "1..2", "abc"])
def test_parse_quantity_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(text)

"""`kaito_dev.incluster`'s local overlay, rendered by the real ``kubectl kustomize``: deploy/
unchanged but for the image, the workspace controller's registry and hub, and the
gpu-provisioner's emulator settings, CA and ARM token Secret; the system node's labels;
the control plane's flags for pods."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kaito_dev.aks.realnodes import kubelet_labels
from kaito_dev.controlplane import ControlPlane
from kaito_dev.incluster import (
    ARM_CA_MOUNT,
    system_node_dir_for,
    system_node_labels,
    system_node_name,
    write_overlay,
)
from kaito_dev.stack import node_dir_for

ROOT = Path(__file__).resolve().parents[2]
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def arm_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "ca.crt").write_text(CA)
    return {
        "ARM_BASE_URL": "https://192.0.2.2:4443",
        "ARM_CA_BUNDLE": str(tmp_path / "ca.crt"),
        "ARM_STATIC_TOKEN": "aks-emulator",
        "ARM_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
        "ARM_RESOURCE_GROUP": "kaito-rg",
        "AZURE_CLUSTER_NAME": "kaito-dev",
        "LOCATION": "eastus",
    }


WORKSPACE_CONTROLLER = {
    "KAITO_IMAGE_REGISTRY": "127.0.0.1:5000",
    "KAITO_HF_ENDPOINT": "http://192.0.2.2:8000",
    "KAITO_PLAIN_HTTP_REGISTRIES": "192.0.2.2:5001",
}


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_the_overlay_changes_only_the_local_settings_of_deploy(tmp_path: Path) -> None:
    overlay = write_overlay(
        tmp_path / "dev" / "kaito-install",
        registry="127.0.0.1:5000",
        tag="0.1.0-next",
        workspace_controller=WORKSPACE_CONTROLLER,
        arm_env=arm_env(tmp_path),
    )
    base, local = render(ROOT / "deploy"), render(overlay)
    names = lambda docs: {(d["kind"], d["metadata"]["name"].split("-config-")[0]) for d in docs}  # noqa: E731
    added = names(local) - names(base)
    assert {kind for kind, _ in added} == {"ConfigMap", "Secret"}, added
    objs = by_kind(local)
    deployments = [d for d in local if d["kind"] == "Deployment"]
    assert len(deployments) == 2 and all(d["spec"]["replicas"] == 2 for d in deployments)
    for d in deployments:
        (container,) = d["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "127.0.0.1:5000/kaito-python/controller:0.1.0-next"
        assert "--leader-elect" in container["command"]
    settings = next(
        d
        for d in local
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("kaito-workspace-")
    )
    assert settings["data"] == WORKSPACE_CONTROLLER
    config = objs[("ConfigMap", "gpu-provisioner")]["data"]
    assert config["ARM_BASE_URL"] == "https://192.0.2.2:4443"
    assert config["ARM_CA_BUNDLE"] == f"{ARM_CA_MOUNT}/ca.crt"
    assert "ARM_STATIC_TOKEN" not in config  # a credential: from the Secret
    provisioner = objs[("Deployment", "gpu-provisioner")]["spec"]["template"]["spec"]
    (container,) = provisioner["containers"]
    secret = next(d for d in local if d["kind"] == "Secret")
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    assert {"configMapRef": {"name": "gpu-provisioner"}} in container["envFrom"]
    assert set(secret["data"]) == {"ARM_STATIC_TOKEN"}
    (ca_volume,) = [v for v in provisioner["volumes"] if "configMap" in v]
    ca = next(d for d in local if d["metadata"]["name"] == ca_volume["configMap"]["name"])
    assert ca["data"] == {"ca.crt": CA}
    assert {"name": ca_volume["name"], "mountPath": ARM_CA_MOUNT, "readOnly": True} in container[
        "volumeMounts"
    ]
    # Everything else is deploy/'s: security context, probes, the webhook's Secret.
    base_provisioner = next(
        d for d in base if d["kind"] == "Deployment" and d["metadata"]["name"] == "gpu-provisioner"
    )["spec"]["template"]["spec"]
    assert provisioner["securityContext"] == base_provisioner["securityContext"]
    (base_container,) = base_provisioner["containers"]
    for key in ("command", "securityContext", "livenessProbe", "readinessProbe", "ports"):
        assert container[key] == base_container[key], key


def test_the_readmes_install_overlay_is_the_form_the_local_cluster_applies(
    tmp_path: Path,
) -> None:
    """The README's ``my-kaito/kustomization.yaml`` renders against deploy/ as it says, and
    sets the image and the workspace controller's settings the same way as the overlay
    `kaito dev up` applies (same image entry, same ConfigMap merge)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("# my-kaito/kustomization.yaml\n", 1)[1].split("```", 1)[0]
    mine = yaml.safe_load(block)
    assert mine["resources"] == ["../deploy"]
    mine["resources"] = [os.path.relpath(ROOT / "deploy", tmp_path / "my-kaito")]
    (tmp_path / "my-kaito").mkdir()
    (tmp_path / "my-kaito" / "kustomization.yaml").write_text(yaml.safe_dump(mine))
    rendered = by_kind(render(tmp_path / "my-kaito"))
    for name in ("gpu-provisioner", "kaito-workspace-controller"):
        (container,) = rendered[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "myacr.azurecr.io/kaito-python/controller:0.1.0"
    (settings,) = [
        d for kind, n in rendered if kind == "ConfigMap"
        and n.startswith("kaito-workspace-controller-config")
        for d in [rendered[(kind, n)]]
    ]  # fmt: skip
    assert settings["data"]["KAITO_IMAGE_REGISTRY"] == "myacr.azurecr.io"

    local = yaml.safe_load(
        (
            write_overlay(
                tmp_path / "dev" / "kaito-install",
                registry="127.0.0.1:5000",
                tag="0.1.0",
                workspace_controller=WORKSPACE_CONTROLLER,
                arm_env=arm_env(tmp_path),
            )
            / "kustomization.yaml"
        ).read_text()
    )
    assert [i["name"] for i in local["images"]] == [i["name"] for i in mine["images"]]
    (generator,) = [
        g for g in local["configMapGenerator"] if g["name"] == "kaito-workspace-controller-config"
    ]
    assert {k: generator[k] for k in ("namespace", "behavior")} == {
        k: mine["configMapGenerator"][0][k] for k in ("namespace", "behavior")
    }


def test_the_system_node_looks_like_an_aks_system_pool_and_lives_apart(tmp_path: Path) -> None:
    labels = system_node_labels()
    assert labels["kubernetes.azure.com/mode"] == "system"
    assert labels["agentpool"] == labels["kubernetes.azure.com/agentpool"] == "system"
    own, later = kubelet_labels(labels)
    assert set(later) == {"kubernetes.io/role", "node-role.kubernetes.io/agent"}
    assert "kubernetes.azure.com/mode" in own
    name = system_node_name(tmp_path)
    assert name.startswith("aks-system-") and name.endswith("-vmss000000") and len(name) == 30
    assert system_node_dir_for(tmp_path) != node_dir_for(tmp_path)


def test_the_apiserver_is_reachable_from_pods_only_when_asked(tmp_path: Path) -> None:
    plain = ControlPlane(tmp_path, real_nodes=True)
    assert "--bind-address=127.0.0.1" in plain._address_flags and plain._pod_hosts == []
    pods = ControlPlane(tmp_path, real_nodes=True, pod_address="192.0.2.2")
    assert pods._address_flags == [
        "--bind-address=0.0.0.0",
        "--advertise-address=192.0.2.2",
        "--endpoint-reconciler-type=lease",
    ]
    assert {"192.0.2.2", "10.96.0.1", "kubernetes.default.svc"} <= set(pods._pod_hosts)

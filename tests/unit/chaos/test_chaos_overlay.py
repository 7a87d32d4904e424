"""The chaos run's gpu-provisioner settings reach the in-cluster pods: `PROVISIONER_ENV`
goes into the overlay's gpu-provisioner ConfigMap (the pods' ``envFrom``), rendered by
the real ``kubectl kustomize``; the base's other settings stay as the overlay sets them."""

from __future__ import annotations

from pathlib import Path

from kaito.runtime.labels import parse_selector
from kaito_dev.chaos.cluster import GPU_NODES, PROVISIONER_ENV
from kaito_dev.incluster import system_node_labels, write_overlay
from tests.unit.test_incluster_overlay import arm_env, by_kind, render


def test_the_chaos_settings_are_in_the_provisioners_configmap(tmp_path: Path) -> None:
    overlay = write_overlay(
        tmp_path / "kaito-install",
        registry="127.0.0.1:5000",
        tag="0.1.0",
        workspace_controller={"KAITO_HF_ENDPOINT": "http://192.0.2.2:8000"},
        arm_env=arm_env(tmp_path),
        provisioner_settings=PROVISIONER_ENV,
    )
    data = by_kind(render(overlay))[("ConfigMap", "gpu-provisioner")]["data"]
    assert {k: data[k] for k in PROVISIONER_ENV} == PROVISIONER_ENV
    assert data["REGISTRATION_TIMEOUT_SECONDS"] == "8"  # the base ships 900
    assert data["ARM_BASE_URL"] == "https://192.0.2.2:4443"


def test_the_node_agent_serves_the_user_pools_not_the_system_node() -> None:
    selector = parse_selector(GPU_NODES)
    assert not selector.matches(system_node_labels())
    gpu_pool = {"kubernetes.azure.com/agentpool": "wsa1b2c3", "kubernetes.azure.com/mode": "user"}
    assert selector.matches(gpu_pool)

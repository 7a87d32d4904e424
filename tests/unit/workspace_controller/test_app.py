"""The controller's watches (predicates, map functions), its gauge and its command line."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from kaito.cli import build_parser
from kaito.controllers.workspace.app import (
    NODE_CHANGED,
    SPEC_OR_METADATA_CHANGED,
    STATE_COLLECTOR,
    machine_to_workspace,
    node_to_workspaces,
    workspace_preset,
    workspace_state,
)
from kaito.runtime.cache import Cache
from kaito.runtime.metrics import REGISTRY, register_once
from kaito.runtime.reconcile import Request

Obj = dict[str, Any]

WS_LABELS = {"kaito.sh/workspace": "phi", "kaito.sh/workspacenamespace": "ns"}


def ws(name: str = "phi", **status: Any) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1", "generation": 1},
        "resource": {
            "instanceType": "Standard_NC6s_v3",
            "labelSelector": {"matchLabels": {"apps": name}},
            "preferredNodes": ["pref"],
        },
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
        "status": status,
    }


def test_status_only_workspace_updates_are_dropped() -> None:
    old = ws()
    status_only = {**ws(conditions=[{"type": "X"}]), "metadata": {**old["metadata"]}}
    status_only["metadata"]["resourceVersion"] = "2"
    assert not SPEC_OR_METADATA_CHANGED.update(old, status_only)
    deleting = ws()
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert SPEC_OR_METADATA_CHANGED.update(old, deleting)
    spec = ws()
    spec["resource"]["count"] = 2
    assert SPEC_OR_METADATA_CHANGED.update(old, spec)


def node(name: str, labels: dict[str, str], ready: bool = True, heartbeat: str = "t0") -> Obj:
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {
            "capacity": {"nvidia.com/gpu": "1"},
            "conditions": [{"type": "Ready", "status": str(ready), "lastHeartbeatTime": heartbeat}],
        },
    }


def test_node_heartbeats_are_dropped_but_readiness_and_labels_pass() -> None:
    n = node("n", WS_LABELS)
    assert not NODE_CHANGED.update(n, node("n", WS_LABELS, heartbeat="t1"))
    assert NODE_CHANGED.update(n, node("n", WS_LABELS, ready=False))
    assert NODE_CHANGED.update(n, node("n", {**WS_LABELS, "accelerator": "nvidia"}))


def test_machines_and_nodes_map_to_their_workspace_by_label() -> None:
    assert list(machine_to_workspace({"metadata": {"labels": WS_LABELS}})) == [Request("ns", "phi")]
    assert list(machine_to_workspace({"metadata": {"labels": {}}})) == []
    cache = Cache()
    for obj in (ws("phi"), ws("other")):
        cache.upsert(obj)
    map_node = node_to_workspaces(cache)
    assert list(map_node(node("n", WS_LABELS))) == [Request("ns", "phi")]
    byo = {"apps": "other", "node.kubernetes.io/instance-type": "Standard_NC6s_v3"}
    assert list(map_node(node("byo", byo))) == [Request("ns", "other")]
    assert sorted(map_node(node("pref", {}))) == [Request("ns", "other"), Request("ns", "phi")]
    assert list(map_node(node("stranger", {}))) == []


def test_workspace_gauges_by_state_and_preset() -> None:
    ready = ws(conditions=[{"type": "ResourceReady", "status": "True"}])
    failed = ws(conditions=[{"type": "MachineReady", "status": "False"}])
    deleting = ws()
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    custom = {**ws(), "inference": {"template": {}}}
    objs = [ready, failed, deleting, ws(), custom]
    assert [workspace_state(o) for o in objs] == [
        "ready",
        "failed",
        "deleting",
        "provisioning",
        "provisioning",
    ]
    assert workspace_preset(custom) is None
    register_once(STATE_COLLECTOR)  # as WorkspaceController() does
    STATE_COLLECTOR.set_source(lambda: objs)
    try:
        text = generate_latest(REGISTRY).decode()
    finally:
        STATE_COLLECTOR.set_source(None)
    assert 'kaito_workspace_count{state="ready"} 1.0' in text
    assert 'kaito_workspace_count{state="provisioning"} 2.0' in text
    assert 'kaito_workspace_preset_count{preset="phi-3-mini-4k-instruct"} 4.0' in text


def test_the_command_line_has_the_controller_and_webhook_flags() -> None:
    args = build_parser().parse_args(
        [
            "workspace-controller",
            "--kubeconfig",
            "/k",
            "--leader-elect",
            "--metrics-bind-address",
            "0",
            "--webhook-cert-secret",
            "",
            "--webhook-url",
            "https://127.0.0.1:{port}/validate/workspaces",
        ]
    )
    assert args.kubeconfig == "/k" and args.leader_elect and args.metrics_bind_address == "0"
    assert args.health_probe_bind_address == ":8081" and args.workers == 5
    assert args.webhook_cert_secret == "" and args.webhook_url.startswith("https://127.0.0.1")
    assert not args.no_webhook

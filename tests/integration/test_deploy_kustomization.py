"""``kubectl apply -k deploy/`` against the real apiserver: the whole installation is
accepted (server-side dry run, then for real), and the workspace controller's RBAC is
enough: ``kaito workspace-controller`` authenticated only as its ServiceAccount (a token
from the TokenRequest API), with leader election in kaito-system and the webhook's
certificate Secret there, becomes ready, registers its webhook, turns a Workspace into a
Machine and releases the Workspace's finalizer on deletion."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.api.machine import MACHINES
from kaito.api.workspace import LABEL_WORKSPACE, WORKSPACES, WORKSPACES_V1ALPHA1
from kaito.controllers.workspace.admission.webhook import (
    CERT_SECRET,
    CONFIGURATION_NAME,
    VALIDATING_WEBHOOK_CONFIGURATIONS,
)
from kaito.runtime.client import Client
from kaito.runtime.errors import AlreadyExists, ApiError, NotFound
from kaito.runtime.resource import (
    CUSTOMRESOURCEDEFINITIONS,
    LEASES,
    NAMESPACES,
    SECRETS,
)
from kaito_dev.controlplane import free_port
from kaito_dev.identities import CONTROLLERS, service_account_kubeconfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NAMESPACE = "kaito-system"
SERVICE_ACCOUNT = "kaito-workspace-controller"
WORKSPACE_NAMESPACE = "default"


WORKSPACE_CONTROLLER = CONTROLLERS[1]


def kubectl(kubeconfig: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def rendered() -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.fixture
async def applied(client: Client, kubeconfig: str, tmp_path: Path) -> AsyncIterator[None]:
    docs = rendered()
    crds = [d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"]
    preexisting_crds = set()
    for name in crds:
        with contextlib.suppress(NotFound):
            await client.get(CUSTOMRESOURCEDEFINITIONS, name)
            preexisting_crds.add(name)
    # A server-side dry run cannot create the Namespace its namespaced objects need: the
    # real one must exist first (on a fresh cluster `kubectl apply -k` creates it first).
    with contextlib.suppress(AlreadyExists):
        await client.create(NAMESPACES, {"metadata": {"name": NAMESPACE}})
    # What the kustomization owns, less the Namespace and the CRDs: other suites share this
    # apiserver and use both (session fixtures install the CRDs once), so those stay,
    # unless this test created the CRDs. The webhook configuration in particular must not
    # outlive the test: its failurePolicy is Fail.
    owned = [d for d in docs if d["kind"] not in ("Namespace", "CustomResourceDefinition")]
    owned_file = tmp_path / "owned.yaml"
    owned_file.write_text(yaml.safe_dump_all(owned))
    try:
        yield None
    finally:
        kubectl(kubeconfig, "delete", "--ignore-not-found", "--wait=false", "-f", str(owned_file))
        with contextlib.suppress(NotFound):
            await client.delete(SECRETS, CERT_SECRET, NAMESPACE)
        with contextlib.suppress(NotFound):
            await client.delete(LEASES, "workspace-controller", NAMESPACE)
        with contextlib.suppress(NotFound):
            await client.delete(VALIDATING_WEBHOOK_CONFIGURATIONS, CONFIGURATION_NAME)
        for name in set(crds) - preexisting_crds:
            with contextlib.suppress(NotFound):
                await client.delete(CUSTOMRESOURCEDEFINITIONS, name)
        async with asyncio.timeout(30):
            for name in set(crds) - preexisting_crds:
                with contextlib.suppress(NotFound):
                    while True:
                        await client.get(CUSTOMRESOURCEDEFINITIONS, name)
                        await asyncio.sleep(0.1)


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kaito.cli", *argv], env=env, stdout=out, stderr=out
        )


async def test_kubectl_apply_k_deploy_installs_kaito_and_the_controller_runs_with_its_rbac(
    client: Client, kubeconfig: str, tmp_path: Path, applied: None
) -> None:
    kubectl(kubeconfig, "apply", "--dry-run=server", "-k", str(DEPLOY))
    kubectl(kubeconfig, "apply", "-k", str(DEPLOY))
    kubectl(
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/workspaces.kaito.sh",
        "crd/machines.karpenter.sh",
    )
    for doc in rendered():
        meta = doc["metadata"]
        ns = ["-n", meta["namespace"]] if meta.get("namespace") else []
        kind = f"{doc['kind'].lower()}.{doc['apiVersion'].rpartition('/')[0] or 'core'}"
        kubectl(kubeconfig, "get", *ns, kind.removesuffix(".core"), meta["name"])

    sa_config = await service_account_kubeconfig(
        client, kubeconfig, WORKSPACE_CONTROLLER, tmp_path / "sa.kubeconfig"
    )
    # What it may not do: read Secrets beyond its own, delete Nodes, touch Machine status.
    for verb, what in (
        ("list", "secrets"),
        ("delete", "nodes"),
        ("patch", "machines.karpenter.sh/status"),
    ):
        answer = kubectl(sa_config, "auth", "can-i", verb, what, "-A", check=False)
        assert answer.stdout.strip() == "no", (verb, what, answer.stdout, answer.stderr)

    probes = free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")
    }
    env |= {"KUBECONFIG": sa_config, "POD_NAMESPACE": NAMESPACE, "KAITO_LOG_FORMAT": "json"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    log = tmp_path / "controller.log"
    argv = [
        "workspace-controller",
        f"--kubeconfig={sa_config}",
        "--metrics-bind-address=0",
        f"--health-probe-bind-address=127.0.0.1:{probes}",
        "--leader-elect",
        f"--leader-election-namespace={NAMESPACE}",
        "--webhook-bind-address=127.0.0.1:0",
        # The Deployment's Secret (created by the controller: proves that RBAC too); the
        # URL replaces the Service, which has no endpoints here (no kubelet runs pods).
        f"--webhook-cert-secret={CERT_SECRET}",
        "--webhook-url=https://127.0.0.1:{port}/validate/workspaces",
    ]
    proc = spawn(argv, env, log)
    name = f"deploy-{uuid.uuid4().hex[:8]}"
    try:
        async with asyncio.timeout(20):
            while await asyncio.to_thread(_get, f"http://127.0.0.1:{probes}/readyz") != 200:
                assert proc.poll() is None, log.read_text()[-3000:]
                await asyncio.sleep(0.2)
        # Ready means registered: it updated the applied configuration to its URL and CA.
        registered = await client.get(VALIDATING_WEBHOOK_CONFIGURATIONS, CONFIGURATION_NAME)
        assert "url" in registered["webhooks"][0]["clientConfig"]
        assert await client.get(SECRETS, CERT_SECRET, NAMESPACE)

        body = {
            "apiVersion": WORKSPACES_V1ALPHA1.api_version,
            "kind": "Workspace",
            "metadata": {"name": name, "namespace": WORKSPACE_NAMESPACE},
            "resource": {
                "instanceType": "Standard_NC6s_v3",
                "count": 1,
                "labelSelector": {"matchLabels": {"apps": name}},
            },
            "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
        }
        async with asyncio.timeout(15):  # the apiserver picks the registration up async
            while True:
                try:
                    await client.create(WORKSPACES_V1ALPHA1, body)
                    break
                except ApiError as e:  # retried until the apiserver reaches the webhook
                    if "webhook" not in e.message:
                        raise
                    await asyncio.sleep(0.2)
        async with asyncio.timeout(15):
            while True:
                machines = await client.list(MACHINES, label_selector=f"{LABEL_WORKSPACE}={name}")
                ws = await client.get(WORKSPACES, name, WORKSPACE_NAMESPACE)
                conditions = (ws.get("status") or {}).get("conditions")
                if machines["items"] and ws["metadata"].get("finalizers") and conditions:
                    break
                assert proc.poll() is None, log.read_text()[-3000:]
                await asyncio.sleep(0.2)
        lease = await client.get(LEASES, "workspace-controller", NAMESPACE)
        assert lease["spec"]["holderIdentity"]

        # No provisioner runs: the Machines carry no finalizer and the controller's delete
        # removes them at once; then it releases the Workspace's finalizer.
        await client.delete(WORKSPACES, name, WORKSPACE_NAMESPACE)
        async with asyncio.timeout(15):
            with contextlib.suppress(NotFound):
                while True:
                    await client.get(WORKSPACES, name, WORKSPACE_NAMESPACE)
                    await asyncio.sleep(0.2)
        machines = await client.list(MACHINES, label_selector=f"{LABEL_WORKSPACE}={name}")
        assert machines["items"] == []
        # A missing permission is logged as "403 Forbidden: ... is forbidden: ...". Not a
        # bare "403": reconcile IDs are UUIDs, and "403" turns up in one now and then.
        assert "forbidden" not in log.read_text().lower(), log.read_text()[-3000:]

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, log.read_text()[-3000:]
    except TimeoutError:  # a missing permission shows as a 403 in the controller's log
        pytest.fail(f"timed out; the controller's log:\n{log.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(NotFound):
            ws = await client.get(WORKSPACES, name, WORKSPACE_NAMESPACE)
            if ws["metadata"].get("finalizers"):
                patch = {"metadata": {"finalizers": None}}
                await client.patch(WORKSPACES, name, patch, WORKSPACE_NAMESPACE)
            await client.delete(WORKSPACES, name, WORKSPACE_NAMESPACE)
        for machine in (await client.list(MACHINES, label_selector=f"{LABEL_WORKSPACE}={name}"))[
            "items"
        ]:
            with contextlib.suppress(NotFound):
                await client.delete(MACHINES, machine["metadata"]["name"])

"""KAITO installed in the local cluster as users install it: `kaito dev demo --controllers
in-cluster` (REAL nodes: run under the shared lock, /tmp/kaito-realnodes.lock).

One stack, in order:

1. ``kaito dev demo --controllers in-cluster`` boots the system node, runs
   ``kubectl apply -k`` of a local overlay of deploy/, and the quick start's Workspace
   reaches WorkspaceReady through the controllers' pods; ``kubectl get pods -n
   kaito-system`` shows both Deployments' two replicas Running from the controller image
   in the stack's registry, on the system node;
2. the webhook is registered by its Service (no URL) with the certificate Secret its
   first replica created; only each Lease's holder reconciles (its pods' metrics, scraped
   at their pod IPs: the followers' ``controller_runtime_reconcile_total`` is zero);
3. deleting each leader's pod hands its Lease to the other replica within the Lease's
   duration;
4. an upgrade: the same image pushed as ``0.1.0-next``, the overlay applied again with
   that tag, both Deployments roll, and the Workspace is untouched (same Machine, same
   inference Deployment generation, same pod);
5. ``kaito dev down`` leaves nothing: no process, node, container or ``KUBE-*`` chain.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.api.machine import MACHINES
from kaito.api.workspace import LABEL_WORKSPACE, WORKSPACES
from kaito.controllers.workspace.admission.webhook import CERT_SECRET, CONFIGURATION_NAME
from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.resource import DEPLOYMENTS, LEASES, PODS, SECRETS
from kaito_dev import incluster
from kaito_dev.controlplane import ControlPlaneState
from kaito_dev.realnode import hoststate
from kaito_dev.realnode.node import RUN_ROOT
from kaito_dev.stack import read_env_file
from tests.integration.kubernetes_sd import MONITORING, Pod, with_static_discovery
from tests.integration.prometheus import run_prometheus

Obj = dict[str, Any]
WORKSPACE = "workspace-phi-3-mini"
NEXT_TAG = "0.1.0-next"


def run(*argv: str, timeout: float = 1200) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "kaito_dev", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def reconciles(pod: Obj) -> float:
    """The pod's ``controller_runtime_reconcile_total``, summed over its labels."""
    url = f"http://{pod['status']['podIP']}:8080/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("controller_runtime_reconcile_total{")
    )


async def settled(client: Client, tag: str, timeout: float = 240) -> dict[str, list[Obj]]:
    """Both Deployments rolled out on ``tag`` (no old pod left); their pods."""
    deadline = time.monotonic() + timeout
    while True:
        pods = {
            d: await incluster.controller_pods(client, d) for d in incluster.CONTROLLER_DEPLOYMENTS
        }
        deployments = [
            await client.get(DEPLOYMENTS, d, incluster.NAMESPACE)
            for d in incluster.CONTROLLER_DEPLOYMENTS
        ]
        if all(incluster._ready(d) for d in deployments) and all(
            len(ps) == 2
            and all(p["spec"]["containers"][0]["image"].endswith(f":{tag}") for p in ps)
            and all(_pod_ready(p) for p in ps)
            for ps in pods.values()
        ):
            return pods
        assert time.monotonic() < deadline, json.dumps(
            {d: [p["status"] for p in ps] for d, ps in pods.items()}
        )[-4000:]
        await asyncio.sleep(0.5)


def _pod_ready(pod: Obj) -> bool:
    conds = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or ()}
    return pod["status"].get("phase") == "Running" and conds.get("Ready") == "True"


async def workspace_state(client: Client) -> Obj:
    """What an upgrade of the controllers must leave as it is."""
    ws = await client.get(WORKSPACES, WORKSPACE, "default")
    machines = await client.list(MACHINES, label_selector=f"{LABEL_WORKSPACE}={WORKSPACE}")
    deployment = await client.get(DEPLOYMENTS, WORKSPACE, "default")
    pods = await client.list(PODS, "default", label_selector=f"{LABEL_WORKSPACE}={WORKSPACE}")
    ready = {c["type"]: c["status"] for c in ws["status"]["conditions"]}["WorkspaceReady"]
    return {
        "workspace generation": ws["metadata"]["generation"],
        "WorkspaceReady": ready,
        "machines": sorted(m["metadata"]["uid"] for m in machines["items"]),
        "deployment": (deployment["metadata"]["uid"], deployment["metadata"]["generation"]),
        "pods": sorted(p["metadata"]["uid"] for p in pods["items"]),
    }


async def checks(state: ControlPlaneState, say: Any) -> None:
    stack = json.loads((Path(state.data_dir) / "stack.json").read_text())
    registry, system_node = stack["registry"], stack["system_node"]
    async with Client(await ClientConfig.from_kubeconfig(state.kubeconfig)) as client:
        pods = await settled(client, "0.1.0")
        for ps in pods.values():
            for pod in ps:
                assert pod["spec"]["nodeName"] == system_node, pod["spec"]
                image = pod["spec"]["containers"][0]["image"]
                assert image == f"{registry}/kaito-python/controller:0.1.0", image
                assert pod["status"]["containerStatuses"][0]["imageID"], pod["status"]

        # The webhook: through its Service, with the certificate Secret of the manifests.
        vwc = await client.request(
            "GET",
            f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{CONFIGURATION_NAME}",
        )
        config = vwc["webhooks"][0]["clientConfig"]
        assert "url" not in config and config["service"]["name"] == "kaito-workspace-webhook"
        assert config.get("caBundle"), config
        assert await client.get(SECRETS, CERT_SECRET, incluster.NAMESPACE)
        assert await incluster.webhook_answers(client)

        # Only the leader acts.
        for deployment, lease in incluster.CONTROLLER_DEPLOYMENTS.items():
            holder = await incluster.lease_holder(client, lease)
            counts = {p["metadata"]["name"]: reconciles(p) for p in pods[deployment]}
            say(f"{deployment}: leader {holder}, reconciles per pod {counts}")
            assert holder in counts, (holder, counts)
            assert counts[holder] > 0, counts
            assert all(n == 0 for name, n in counts.items() if name != holder), counts

        before = await workspace_state(client)
        assert before["WorkspaceReady"] == "True" and len(before["machines"]) == 1, before

        # A real Prometheus with deploy/monitoring's scrape config scrapes the real pods
        # (the pod discovery is tests.integration.kubernetes_sd's: Debian's build has none).
        inference = await client.list(
            PODS, "default", label_selector=f"{LABEL_WORKSPACE}={WORKSPACE}"
        )
        discovered = [
            Pod(p["metadata"]["namespace"], p["metadata"]["name"], p, p["status"]["podIP"])
            for p in [*pods["gpu-provisioner"], *pods["kaito-workspace-controller"],
                      *inference["items"]]
        ]  # fmt: skip
        config = yaml.safe_load((MONITORING / "prometheus-scrape-config.yaml").read_text())
        config["global"] |= {"scrape_interval": "1s", "scrape_timeout": "1s"}
        with run_prometheus(
            with_static_discovery(config, discovered), Path(state.data_dir) / "prometheus"
        ) as prom:
            up = await prom.wait_for_series_async("up == 1", timeout=60, min_count=5)
            jobs = sorted(s["metric"]["job"] for s in up)
            say(f"Prometheus: up == 1 for {jobs}")
            assert (
                jobs
                == ["gpu-provisioner"] * 2
                + ["kaito-inference"]
                + ["kaito-workspace-controller"] * 2
            ), up
            leaders = await prom.wait_for_series_async(
                "leader_election_master_status == 1", timeout=30, min_count=2
            )
            assert sorted(s["metric"]["job"] for s in leaders) == [
                "gpu-provisioner",
                "kaito-workspace-controller",
            ], leaders

        # Failover: delete each leader's pod; the other replica takes the Lease.
        for lease in incluster.CONTROLLER_DEPLOYMENTS.values():
            holder = await incluster.lease_holder(client, lease)
            assert holder is not None
            duration = (await client.get(LEASES, lease, incluster.NAMESPACE))["spec"][
                "leaseDurationSeconds"
            ]
            t0 = time.monotonic()
            await asyncio.to_thread(
                subprocess.run,
                ["kubectl", f"--kubeconfig={state.kubeconfig}", "-n", incluster.NAMESPACE,
                 "delete", "pod", holder, "--wait=false"],
                check=True, capture_output=True,
            )  # fmt: skip
            while (new := await incluster.lease_holder(client, lease)) in (holder, None):
                assert time.monotonic() - t0 < duration + 10, f"{lease}: still {new}"
                await asyncio.sleep(0.1)
            took = time.monotonic() - t0
            say(f"measured: {lease} failover {holder} -> {new} in {took:.1f}s (lease {duration}s)")
            assert took < duration, (lease, took, duration)
        await settled(client, "0.1.0")

        # Upgrade: tag B of the image, the overlay applied again; the Workspace stays.
        from kaito_dev.images import Builder

        await asyncio.to_thread(
            Builder(say=say).push,
            "localhost/kaito-python/controller:0.1.0",
            f"{registry}/kaito-python/controller:{NEXT_TAG}",
        )
        arm_env = read_env_file(Path(state.data_dir) / "aks-emulator" / "provisioner.env")
        overlay = incluster.write_overlay(
            Path(stack["overlay"]),
            registry=registry,
            tag=NEXT_TAG,
            hf_endpoint=stack["hf_endpoint"],
            arm_env=arm_env,
        )
        t0 = time.monotonic()
        await asyncio.to_thread(incluster.apply_overlay, state.kubeconfig, overlay)
        pods = await settled(client, NEXT_TAG)
        say(f"measured: upgrade rollout to {NEXT_TAG} in {time.monotonic() - t0:.1f}s")
        # The new leaders start by reconciling everything they see: give them that.
        for deployment, lease in incluster.CONTROLLER_DEPLOYMENTS.items():
            deadline = time.monotonic() + 60
            while True:
                holder = await incluster.lease_holder(client, lease)
                pod = next((p for p in pods[deployment] if p["metadata"]["name"] == holder), None)
                if pod is not None and reconciles(pod) > 0:
                    break
                assert time.monotonic() < deadline, f"{deployment}: no reconcile by {holder}"
                await asyncio.sleep(0.5)
        await asyncio.sleep(5)
        after = await workspace_state(client)
        assert after == before, (before, after)


@pytest.mark.timeout(1800)
def test_kubectl_apply_k_in_the_local_cluster_serves_the_quick_start_fails_over_and_upgrades(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "dev"
    out = ""
    try:
        out = run("demo", "--controllers", "in-cluster", "--dir", str(state_dir))
        assert re.search(r"kubectl apply -k \S+kaito-install", out), out
        assert "WorkspaceReady=True" in out, out
        lines = [
            ln
            for ln in out.splitlines()
            if re.search(r"\] +(gpu-provisioner|kaito-workspace-controller)-", ln)
        ]
        assert len(lines) == 4 and all(" Running " in ln and " 1/1 " in ln for ln in lines), out
        assert re.search(r"both controllers' 2 replicas Ready after [\d.]+s", out), out
        assert re.search(r"the webhook answers through its Service after [\d.]+s", out), out
        print(out)
        state = ControlPlaneState.load(state_dir)
        asyncio.run(checks(state, lambda m: print(m, flush=True)))
    except BaseException:
        kubeconfig = state_dir / "kubeconfig"
        for args in (
            ["get", "pods,nodes,deploy,lease,endpoints", "-A", "-o", "wide"],
            ["-n", incluster.NAMESPACE, "describe", "pods"],
            ["-n", incluster.NAMESPACE, "logs", "-l", "app.kubernetes.io/part-of!=x",
             "--all-containers", "--tail=40", "--prefix"],
        ):  # fmt: skip
            dump = subprocess.run(
                ["kubectl", f"--kubeconfig={kubeconfig}", *args],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            print(f"$ kubectl {' '.join(args)}\n{dump.stdout}{dump.stderr}")
        raise
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "kaito_dev", "down", "--dir", str(state_dir)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    assert down.returncode == 0 and "LEFT BEHIND" not in down.stdout, down.stdout + down.stderr
    assert "stopped system node aks-system-" in down.stdout, down.stdout
    assert not state_dir.exists()
    assert not list(RUN_ROOT.glob("aks-*")), "node state left in /run/kaito-node"
    assert hoststate.kube_chains() == [], "iptables chains left"

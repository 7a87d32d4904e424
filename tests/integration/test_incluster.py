"""KAITO installed in the local cluster as users install it, upgraded from the previous
commit, and failed over: ``kaito dev up --controllers in-cluster --audit`` (REAL nodes:
run under the shared lock, /tmp/kaito-realnodes.lock).

One stack, in order:

1. the **previous commit's controller image** is built from its tree (``git archive
   HEAD~1``, its Dockerfile, the same buildah layer cache; a shallow clone without HEAD~1
   fails naming the reason); ``kaito dev up --controllers in-cluster --audit`` boots the
   system node and runs ``kubectl apply -k`` of a local overlay of deploy/ (both
   Deployments' two replicas Running, the webhook answering through its Service), with
   the apiserver's audit log on;
2. **upgrade**: that commit's image (pushed as ``prev-<sha>``) and its deploy/ (an
   overlay pointing at its tree) are applied, the quick start's Workspace is created
   through those controllers and reaches WorkspaceReady; then the overlay of this
   checkout (the one ``up`` applied) is applied again, both Deployments roll, the new
   leaders reconcile, and the Workspace is untouched: same Machine, same inference
   Deployment (uid, generation), same pod, WorkspaceReady True throughout;
3. the current pods run on the system node from the stack's registry; the webhook is
   registered by its Service with the certificate Secret its first replica created; only
   each Lease's holder reconciles (the followers' ``controller_runtime_reconcile_total``
   is zero); a real Prometheus with deploy/monitoring's config scrapes the pods;
4. **leader failover against the pods**, both controllers at once (Lease 15 s, renew
   deadline 10 s, retry 2 s: the defaults deploy/ runs with):
   - deleting each leader's pod hands its Lease to the other replica within the lease;
   - SIGSTOP of each leader's container process (its host PID from the system node's
     containerd) for longer than the lease: the other replica takes over within the
     bound the lease implies, and not before the old leader's last renewal is a lease old
     (audit log); SIGCONT: the old leader's container exits 1 (leadership lost, nothing
     released), the audit log holds NO write from it after the takeover (not one
     request, successful or not: each replica's User-Agent ends with its identity), the
     kubelet restarts the container and both Deployments are back to 2 Ready;
   - SIGKILL of each (new) leader's process: another identity takes the Lease within the
     bound; the kubelet restarts the container;
   and the Workspace is still untouched;
5. ``kaito dev down`` leaves nothing: no process, node, container or ``KUBE-*`` chain.

Printed (``measured:``): the previous commit's image build, the rollouts, each
failover's fault -> new acquireTime. Only the bounds the lease implies are asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.api.machine import MACHINES
from kaito.api.workspace import LABEL_WORKSPACE, WORKSPACES
from kaito.controllers.workspace.admission.webhook import CERT_SECRET, CONFIGURATION_NAME
from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.errors import NotFound
from kaito.runtime.resource import DEPLOYMENTS, LEASES, PODS, SECRETS
from kaito_dev import incluster
from kaito_dev.controlplane import REPO_ROOT, ControlPlaneState
from kaito_dev.realnode import hoststate
from kaito_dev.realnode.node import RUN_ROOT
from kaito_dev.stack import read_env_file
from tests.integration.kubernetes_sd import MONITORING, Pod, with_static_discovery
from tests.integration.leader_audit import read_audit, takeover, takeover_bound, ts, writes_after
from tests.integration.prometheus import run_prometheus

Obj = dict[str, Any]
WORKSPACE = "workspace-phi-3-mini"
QUICK_START = REPO_ROOT / "examples" / "kaito_workspace_phi_3.yaml"
LEASE, RENEW, RETRY = 15.0, 10.0, 2.0
"""deploy/'s leader election: the controllers' defaults (`kaito.runtime.entrypoint`)."""
TAKEOVER_BOUND = takeover_bound(LEASE, RETRY, slack=5.0)
WEBHOOK_SETUP = frozenset({"secrets", "validatingwebhookconfigurations"})
"""What every workspace-controller replica writes at start, leader or not."""


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


def git(*args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def previous_commit(dest: Path) -> tuple[str, Path]:
    """HEAD~1's tree, extracted to ``dest`` (``git archive``); (its commit, ``dest``)."""
    found = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", "--quiet", "HEAD~1^{commit}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if found.returncode != 0:
        shallow = git("rev-parse", "--is-shallow-repository") == "true"
        reason = (
            "this clone is shallow (git fetch --deepen=1, or clone with --depth 2 or more)"
            if shallow
            else "HEAD has no parent commit"
        )
        pytest.fail(
            f"the upgrade test builds the previous commit's controller image, and HEAD~1 "
            f"cannot be resolved: {reason}",
            pytrace=False,
        )
    sha = found.stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", sha], stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    assert archive.wait() == 0, f"git archive {sha} failed"
    return sha, dest


def build_previous_controller(tree: Path, sha: str, say: Any) -> tuple[str, str, float]:
    """The previous commit's controller image, built from its tree with its Dockerfile
    (buildah's layer cache: unchanged steps are reused); (local name, tag, build seconds)."""
    from kaito_dev.images import IMAGES, Builder

    builder = Builder(say=say)
    builder.prepare()
    base = builder.base_image()
    spec = next(s for s in IMAGES if s.name == "controller")
    version = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["version"]
    tag = f"prev-{sha[:10]}"
    t0 = time.monotonic()
    local = builder.build(spec, base=base, version=version, revision=sha, root=tree, tag=tag)
    return local, tag, time.monotonic() - t0


async def holder_identity(client: Client, lease: str) -> str:
    """The Lease's full holderIdentity (``<pod>_<uuid>``: a restarted container is another)."""
    obj = await client.get(LEASES, lease, incluster.NAMESPACE)
    return str((obj.get("spec") or {}).get("holderIdentity") or "")


async def pod_named(client: Client, name: str) -> Obj:
    return await client.get(PODS, name, incluster.NAMESPACE)


def container(pod: Obj) -> Obj:
    return dict(pod["status"]["containerStatuses"][0])


def kubectl(kubeconfig: str, *args: str) -> str:
    proc = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return proc.stdout + proc.stderr


async def wait_workspace_ready(client: Client, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ws = await client.get(WORKSPACES, WORKSPACE, "default")
        except NotFound:
            ws = {}
        conds = {c["type"]: c for c in (ws.get("status") or {}).get("conditions") or ()}
        if conds.get("WorkspaceReady", {}).get("status") == "True":
            return
        assert time.monotonic() < deadline, json.dumps(conds)[-3000:]
        await asyncio.sleep(1)


async def new_leader(client: Client, lease: str, old: str, fault_at: float) -> tuple[str, float]:
    """Wait until ``lease`` names another identity than ``old``; (it, fault -> acquireTime)."""
    while True:
        spec = (await client.get(LEASES, lease, incluster.NAMESPACE))["spec"]
        new = spec.get("holderIdentity") or ""
        if new and new != old:
            return new, ts(spec["acquireTime"]) - fault_at
        assert time.time() - fault_at < TAKEOVER_BOUND + 10, f"{lease}: still {new!r}"
        await asyncio.sleep(0.1)


async def renewed(client: Client, lease: str) -> None:
    """Until ``lease``'s holder renews it (its renewTime changes)."""
    first = (await client.get(LEASES, lease, incluster.NAMESPACE))["spec"].get("renewTime")
    deadline = time.monotonic() + 2 * LEASE
    while (await client.get(LEASES, lease, incluster.NAMESPACE))["spec"].get("renewTime") == first:
        assert time.monotonic() < deadline, f"{lease}: not renewed since {first}"
        await asyncio.sleep(0.05)


async def restarted(client: Client, pod: str, restarts: int, timeout: float = 60) -> Obj:
    """Until the pod's container restarted (``restartCount`` > ``restarts``); its status."""
    deadline = time.monotonic() + timeout
    while True:
        status = container(await pod_named(client, pod))
        if status.get("restartCount", 0) > restarts and status["lastState"].get("terminated"):
            return status
        assert time.monotonic() < deadline, f"{pod}: not restarted: {status}"
        await asyncio.sleep(0.5)


async def checks(state: ControlPlaneState, prev: dict[str, Any], tmp: Path, say: Any) -> None:
    stack = json.loads((Path(state.data_dir) / "stack.json").read_text())
    registry, system_node = stack["registry"], stack["system_node"]
    arm_env = read_env_file(Path(state.data_dir) / "aks-emulator" / "provisioner.env")
    current = stack["images"]["controller"].rsplit(":", 1)[1]
    async with Client(await ClientConfig.from_kubeconfig(state.kubeconfig)) as client:
        await settled(client, current)

        # -- upgrade: the previous commit's image and manifests, a Workspace, then ours -----
        from kaito_dev.images import Builder

        sha, tag = prev["sha"], prev["tag"]
        await asyncio.to_thread(
            Builder(say=say).push, prev["local"],
            f"{registry}/kaito-python/controller:{tag}",
        )  # fmt: skip
        previous = incluster.write_overlay(
            tmp / "kaito-install-prev",
            registry=registry,
            tag=tag,
            workspace_controller=stack["workspace_controller"],
            arm_env=arm_env,
            deploy=prev["tree"] / "deploy",
        )
        t0 = time.monotonic()
        await asyncio.to_thread(incluster.apply_overlay, state.kubeconfig, previous)
        await settled(client, tag)
        say(f"measured: rollout to {sha[:10]}'s image and deploy/ in {time.monotonic() - t0:.1f}s")
        deadline = time.monotonic() + 60
        while not await incluster.webhook_answers(client):
            assert time.monotonic() < deadline, "the previous commit's webhook does not answer"
            await asyncio.sleep(0.5)
        t0 = time.monotonic()
        say(kubectl(state.kubeconfig, "apply", "-f", str(QUICK_START)).strip())
        await wait_workspace_ready(client)
        say(f"measured: WorkspaceReady through {sha[:10]}'s controllers in "
            f"{time.monotonic() - t0:.1f}s")  # fmt: skip
        before = await workspace_state(client)
        assert before["WorkspaceReady"] == "True" and len(before["machines"]) == 1, before

        flips: list[Obj] = []

        async def watch_ready() -> None:
            while True:
                now = await workspace_state(client)
                if now["WorkspaceReady"] != "True":
                    flips.append(now)
                await asyncio.sleep(0.5)

        watcher = asyncio.create_task(watch_ready())
        t0 = time.monotonic()
        await asyncio.to_thread(incluster.apply_overlay, state.kubeconfig, Path(stack["overlay"]))
        pods = await settled(client, current)
        say(f"measured: upgrade rollout {tag} -> {current} in {time.monotonic() - t0:.1f}s")
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
        watcher.cancel()
        after = await workspace_state(client)
        assert after == before and flips == [], (before, after, flips)

        # -- the current installation -------------------------------------------------------
        for ps in pods.values():
            for pod in ps:
                assert pod["spec"]["nodeName"] == system_node, pod["spec"]
                image = pod["spec"]["containers"][0]["image"]
                assert image == f"{registry}/kaito-python/controller:{current}", image
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

        # -- failover 1: delete each leader's pod; the other replica takes the Lease ---------
        for lease in incluster.CONTROLLER_DEPLOYMENTS.values():
            holder = await incluster.lease_holder(client, lease)
            assert holder is not None
            t0 = time.monotonic()
            await asyncio.to_thread(
                subprocess.run,
                ["kubectl", f"--kubeconfig={state.kubeconfig}", "-n", incluster.NAMESPACE,
                 "delete", "pod", holder, "--wait=false"],
                check=True, capture_output=True,
            )  # fmt: skip
            while (new := await incluster.lease_holder(client, lease)) in (holder, None):
                assert time.monotonic() - t0 < LEASE + 10, f"{lease}: still {new}"
                await asyncio.sleep(0.1)
            took = time.monotonic() - t0
            say(
                f"measured: {lease} pod deleted: {holder} -> {new} in {took:.1f}s (lease {LEASE:g}s)"
            )
            assert took < LEASE, (lease, took)
        await settled(client, current)

        # -- failover 2: SIGSTOP each leader's process past the lease, SIGCONT after --------
        leases = list(incluster.CONTROLLER_DEPLOYMENTS.values())
        old = {lease: await holder_identity(client, lease) for lease in leases}
        pod_of = {lease: old[lease].rsplit("_", 1)[0] for lease in leases}
        restarts = {}
        pids = {}
        for lease in leases:
            status = container(await pod_named(client, pod_of[lease]))
            restarts[lease] = status.get("restartCount", 0)
            pids[lease] = incluster.container_pid(Path(state.data_dir), status["containerID"])
        resumed_at: dict[str, float] = {}

        async def pause(lease: str) -> tuple[str, float]:
            # Stopped just before a renewal is due, and resumed as soon as the Lease is
            # taken: the kubelet's liveness probe (3 x 20 s, 1 s timeout) kills a stopped
            # container 41-61 s after the stop, and the exit must be the controller's own.
            await renewed(client, lease)
            await asyncio.sleep(RETRY * 0.75)
            stopped_at = time.time()
            os.kill(pids[lease], signal.SIGSTOP)
            say(f"SIGSTOP {pod_of[lease]} (pid {pids[lease]}), {lease}'s leader")
            try:
                return await new_leader(client, lease, old[lease], stopped_at)
            finally:
                resumed_at[lease] = time.time()
                os.kill(pids[lease], signal.SIGCONT)

        taken = await asyncio.gather(*(pause(x) for x in leases))
        new_ids = {lease: identity for lease, (identity, _) in zip(leases, taken, strict=True)}
        for lease, (identity, took) in zip(leases, taken, strict=True):
            say(f"measured: {lease} SIGSTOP: {old[lease]} -> {identity}, acquireTime "
                f"{took:.1f}s after the signal (bound {TAKEOVER_BOUND:.1f}s)")  # fmt: skip
            assert took <= TAKEOVER_BOUND, (lease, took)
        for lease in leases:
            name = pod_of[lease]
            status = await restarted(client, name, restarts[lease], timeout=RENEW + 30)
            events = kubectl(state.kubeconfig, "-n", incluster.NAMESPACE, "get", "events",
                             f"--field-selector=involvedObject.name={name}")  # fmt: skip
            exit_code = status["lastState"]["terminated"]["exitCode"]
            assert exit_code == 1, f"{name}: exit {exit_code}, not 1 (leadership lost)\n{events}"
            previous_log = kubectl(state.kubeconfig, "-n", incluster.NAMESPACE, "logs",
                                   "--previous", name)  # fmt: skip
            assert "leader election lost" in previous_log, previous_log[-3000:]
            assert "leader lease released" not in previous_log, previous_log[-3000:]
        pods = await settled(client, current)
        say("the resumed leaders exited 1, the kubelet restarted them: 2 Ready each again")
        audit = read_audit(state.audit_log, {*old.values(), *new_ids.values()})
        for lease in leases:
            acquired_at, unrenewed = takeover(
                audit, lease, old[lease], new_ids[lease], may_write=WEBHOOK_SETUP
            )
            assert unrenewed >= LEASE - 0.01, f"{lease}: taken over after {unrenewed:.3f}s"
            assert resumed_at[lease] > acquired_at
            late = writes_after(audit, old[lease], acquired_at)
            assert late == [], f"{old[lease]} wrote after losing the lease: {late}"
            say(f"audit log: {lease}'s old leader last renewed {unrenewed:.1f}s before the "
                f"takeover, resumed {resumed_at[lease] - acquired_at:.1f}s after it, and "
                "sent no write after it")  # fmt: skip

        # -- failover 3: SIGKILL each leader's process ---------------------------------------
        old = {lease: await holder_identity(client, lease) for lease in leases}
        pod_of = {lease: old[lease].rsplit("_", 1)[0] for lease in leases}
        for lease in leases:
            status = container(await pod_named(client, pod_of[lease]))
            restarts[lease] = status.get("restartCount", 0)
            pids[lease] = incluster.container_pid(Path(state.data_dir), status["containerID"])
        killed_at = {}
        for lease in leases:
            killed_at[lease] = time.time()
            os.kill(pids[lease], signal.SIGKILL)
        taken = await asyncio.gather(*(new_leader(client, x, old[x], killed_at[x]) for x in leases))
        for lease, (identity, took) in zip(leases, taken, strict=True):
            say(f"measured: {lease} SIGKILL: {old[lease]} -> {identity}, acquireTime "
                f"{took:.1f}s after the signal (bound {TAKEOVER_BOUND:.1f}s)")  # fmt: skip
            assert took <= TAKEOVER_BOUND, (lease, took)
            status = await restarted(client, pod_of[lease], restarts[lease])
            assert status["lastState"]["terminated"]["exitCode"] == 137, status
        audit = read_audit(state.audit_log, {*old.values(), *(i for i, _ in taken)})
        for lease, (identity, _) in zip(leases, taken, strict=True):
            _, unrenewed = takeover(audit, lease, old[lease], identity, may_write=WEBHOOK_SETUP)
            assert unrenewed >= LEASE - 0.01, f"{lease}: taken over after {unrenewed:.3f}s"
        await settled(client, current)
        after = await workspace_state(client)
        assert after == before, (before, after)


@pytest.mark.timeout(1800)
def test_kubectl_apply_k_in_the_local_cluster_upgrades_from_the_previous_commit_and_fails_over(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "dev"
    out = ""

    def say(message: str) -> None:
        print(message, flush=True)

    sha, tree = previous_commit(tmp_path / "prev-tree")
    local, tag, build_s = build_previous_controller(tree, sha, say)
    say(f"measured: the controller image of {sha[:10]} (HEAD~1) built in {build_s:.1f}s")
    try:
        out = run("up", "--controllers", "in-cluster", "--audit", "--dir", str(state_dir))
        assert re.search(r"kubectl apply -k \S+kaito-install", out), out
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
        assert state.audit_log, "kaito dev up --audit: the control plane has no audit log"
        prev = {"sha": sha, "tree": tree, "local": local, "tag": tag}
        asyncio.run(checks(state, prev, tmp_path, say))
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

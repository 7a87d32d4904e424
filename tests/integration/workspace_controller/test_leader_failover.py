"""Leader failover of the real controller processes: two replicas of each controller.

Two ``kaito workspace-controller`` and two ``kaito gpu-provisioner`` processes run with
leader election (lease 4 s, renew deadline 3 s, retry 1 s) beside a ``kaito dev
aks-emulator`` process, against the session's apiserver, which writes an audit log where
every write carries the User-Agent of the process that sent it
(``<component>/<version> <identity>``, the identity being the Lease holderIdentity).
Both controllers go through each step at once:

1. **One leader.** The Lease names one replica; the replicas' own
   ``leader_election_master_status`` agree. A Workspace gets its Machine and GPU node
   (ResourceReady) while each follower reconciles nothing (its metrics) and writes
   nothing (the audit log).
2. **Pause (SIGSTOP) for longer than the lease.** A new Workspace is created while the
   leaders are stopped, so that when they resume they find its watch events queued. The
   followers take over, never before the lease went unrenewed for its duration (audit
   timestamps: old leader's last renewal -> new leader's acquiring write), and do the
   work. The old leaders are then resumed (SIGCONT): each must exit 1 (lost leadership,
   nothing released) and must send NO write after the takeover -- not one request in
   the audit log, successful or not.
3. **Kill (SIGKILL).** Replacements start as followers (as Kubernetes restarts the
   pods), the leaders are killed with a Workspace waiting, the replacements take over
   within the lease's bound and the work goes on.

Printed: per step and controller, fault -> new holder's acquireTime, fault -> its
controllers started, fault -> its first write other than the Lease (its first reconcile
that changed something). Only the bound the lease implies is asserted, not speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kaito.api.machine import MACHINES
from kaito.api.workspace import WORKSPACES, WORKSPACES_V1ALPHA1
from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.resource import LEASES, NAMESPACES, NODES
from kaito_dev.aks.nodes import node_resource_group
from kaito_dev.controlplane import ControlPlaneState, free_port
from tests.integration.leader_audit import (
    by_agent,
    ok,
    read_audit,
    takeover,
    takeover_bound,
    ts,
    writes_after,
)

from .conftest import IMAGE_REGISTRY, is_true

SRC = Path(__file__).resolve().parents[3] / "src"

LEASE, RENEW, RETRY = 8.0, 6.0, 1.0
"""Short but not tight: with a 3 s renew deadline a leader on a busy 2-core machine (load
15 while other suites ran) lost its lease without any fault injected."""
SLACK = 3.0
"""Scheduling slack on a loaded 2-core machine (five Python processes), for bounds only."""
TAKEOVER_BOUND = takeover_bound(LEASE, RETRY, SLACK)
"""Fault -> new holder's acquire (`takeover_bound`)."""
LEASE_FLAGS = [
    f"--leader-elect-lease-duration={LEASE:g}s",
    f"--leader-elect-renew-deadline={RENEW:g}s",
    f"--leader-elect-retry-period={RETRY:g}s",
]

Obj = dict[str, Any]


class Replica:
    """One controller process, its JSON log and its /metrics."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, *, metrics: bool = True
    ) -> None:
        self.name = name
        self.log = log
        self.metrics_port = free_port()
        if metrics:
            argv = [*argv, f"--metrics-bind-address=127.0.0.1:{self.metrics_port}"]
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "kaito.cli", *argv],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._identity = ""

    def events(self) -> list[Obj]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def first(self, event: str) -> Obj | None:
        return next((e for e in self.events() if e.get("event") == event), None)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.name} (exit {self.popen.poll()}):\n" + "\n".join(text)

    @property
    def identity(self) -> str:
        if not self._identity:
            line = self.first("attempting to acquire leader lease")
            self._identity = str(line["identity"]) if line else ""
        return self._identity

    async def started(self) -> None:
        """Until the process tries for the Lease and serves /metrics."""
        await wait_for(lambda: _now(bool(self.identity)), 60, f"{self.name} to start", self)
        await wait_for(self._serves_metrics, 20, f"{self.name}'s /metrics", self)

    async def _serves_metrics(self) -> bool:
        return bool(await self.metrics())

    async def metrics(self) -> str:
        def get() -> str:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        return await asyncio.to_thread(get)

    async def sample(self, name: str) -> float:
        """The sum of every series of metric ``name`` (0 when absent)."""
        total = 0.0
        for line in (await self.metrics()).splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def signal(self, sig: int) -> float:
        """Send ``sig``; the wall-clock time it was sent."""
        at = time.time()
        self.popen.send_signal(sig)
        return at

    async def exit_code(self, timeout: float) -> int:
        try:
            return await asyncio.to_thread(self.popen.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit in {timeout}s\n{self.tail()}") from None


async def _now(value: Any) -> Any:
    return value


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, *procs: Replica
) -> Any:
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = await check()
                if value:
                    return value
                for p in procs:
                    assert p.popen.poll() is None, f"{p.name} exited\n{p.tail()}"
                await asyncio.sleep(0.05)
    except TimeoutError:
        tails = "\n".join(p.tail() for p in procs)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}") from None


@dataclass
class Controller:
    """Replicas of one controller on one Lease (the controller's leader election ID)."""

    component: str
    argv: list[str]
    env: dict[str, str]
    tmp: Path
    namespace: str
    replicas: list[Replica] = field(default_factory=list)
    spawned: int = 0

    def spawn(self) -> Replica:
        self.spawned += 1
        name = f"{self.component}-{self.spawned}"
        r = Replica(name, self.argv, self.env, self.tmp / f"{name}.log")
        self.replicas.append(r)
        return r

    def running(self) -> list[Replica]:
        return [r for r in self.replicas if r.popen.poll() is None]

    def by_identity(self, identity: str) -> Replica:
        found = [r for r in self.replicas if r.identity == identity]
        assert found, f"{self.component}: the Lease names {identity!r}, no replica of this test"
        return found[0]

    async def lease(self, client: Client) -> Obj:
        try:
            return dict((await client.get(LEASES, self.component, self.namespace))["spec"])
        except NotFound:
            return {}

    async def leader(self, client: Client, among: list[Replica]) -> Replica:
        """The replica among ``among`` that holds the Lease, once one does."""
        ids = {r.identity: r for r in among}

        async def held() -> Replica | None:
            return ids.get((await self.lease(client)).get("holderIdentity") or "")

        found: Replica = await wait_for(held, TAKEOVER_BOUND + 30, f"a {self.component} leader")
        return found


async def check_one_leader(client: Client, ctrl: Controller) -> tuple[Replica, Replica]:
    """(leader, follower) of the two running replicas, checked from both sides."""
    a, b = ctrl.running()
    await asyncio.gather(a.started(), b.started())
    leader = await ctrl.leader(client, [a, b])
    follower = b if leader is a else a
    series = f'leader_election_master_status{{name="{ctrl.component}"}}'

    async def says_leader() -> bool:  # set a moment after the Lease write's answer
        return f"{series} 1.0" in await leader.metrics()

    await wait_for(says_leader, 10, f"{leader.name}'s {series} 1", leader)
    assert f"{series} 0.0" in await follower.metrics(), follower.tail()
    return leader, follower


@dataclass
class Failover:
    """One fault injected into one controller's leader, and what followed."""

    step: str
    ctrl: Controller
    old: Replica
    new: Replica
    fault_at: float
    acquire_time: float = 0.0

    def row(self, audit: list[Obj]) -> dict[str, Any]:
        started = self.new.first("controllers started")
        writes = [
            ts(e["requestReceivedTimestamp"])
            for e in by_agent(audit, self.new.identity)
            if e["objectRef"].get("resource") != "leases" and ok(e)
        ]
        first_write = min((t for t in writes if t >= self.fault_at), default=None)
        return {
            "step": self.step,
            "controller": self.ctrl.component,
            "to_acquire_s": round(self.acquire_time - self.fault_at, 2),
            "to_controllers_started_s": (
                round(ts(started["timestamp"]) - self.fault_at, 2) if started else None
            ),
            "to_first_write_s": round(first_write - self.fault_at, 2) if first_write else None,
        }


def _exists(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


@pytest.fixture
async def namespace(client: Client) -> AsyncIterator[str]:
    ns = f"lf-{uuid.uuid4().hex[:8]}"
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    yield ns
    await client.delete(NAMESPACES, ns)


async def test_leader_failover_pause_and_kill_with_two_replicas_of_each_controller(
    client: Client,
    control_plane: ControlPlaneState,
    kubeconfig: str,
    workspace_crd: None,
    machine_crd: None,
    namespace: str,
    tmp_path: Path,
) -> None:
    if not control_plane.audit_log:
        pytest.fail(
            "this test reads the apiserver's audit log: run it on the session control plane "
            "(unset KAITO_TEST_KUBECONFIG), which starts with audit=True",
            pytrace=False,
        )
    t0 = time.monotonic()

    def progress(step: str) -> None:
        print(f"[failover] {step} ({time.monotonic() - t0:.1f}s)", file=sys.stderr)

    test_id = uuid.uuid4().hex[:10]
    env = {**os.environ, "KUBECONFIG": kubeconfig, "KAITO_LOG_FORMAT": "json"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env.pop("KAITO_LOG_LEVEL", None)

    # -- the AKS emulator, then two replicas of each controller ------------------------------
    emu_dir = tmp_path / "emu"
    cluster = f"aks{test_id[:8]}"
    emulator = Replica(
        "aks-emulator",
        [
            "dev", "aks-emulator", "--port", str(free_port()), "--dir", str(emu_dir),
            "--cluster-name", cluster, "--create-latency", "0.3",
            "--delete-latency", "0.1", "--node-ready-delay", "0.2", "--heartbeat-interval", "0",
        ],
        env,
        tmp_path / "aks-emulator.log",
        metrics=False,
    )  # fmt: skip
    common = [
        "--health-probe-bind-address=0",
        "--leader-elect",
        f"--leader-election-namespace={namespace}",
        *LEASE_FLAGS,
    ]
    ws = Controller(
        "workspace-controller",
        ["workspace-controller", "--no-webhook", f"--image-registry={IMAGE_REGISTRY}", *common],
        env,
        tmp_path,
        namespace,
    )
    controllers: list[Controller] = [ws]
    try:
        for _ in range(2):
            ws.spawn()
        env_file = emu_dir / "provisioner.env"
        await wait_for(lambda: _now(_exists(env_file)), 30, "the emulator's env file", emulator)
        prov_env = {**env, **_read_env(env_file)}
        prov_env.update(
            ARM_POLLING_INTERVAL="0.1",
            LAUNCH_BACKOFF_BASE_SECONDS="0.2",
            MACHINE_LABEL_SELECTOR=f"kaito-test={test_id}",
        )
        prov = Controller(
            "gpu-provisioner", ["gpu-provisioner", *common], prov_env, tmp_path, namespace
        )
        controllers.append(prov)
        for _ in range(2):
            prov.spawn()
        progress("started 2 workspace-controllers, 2 gpu-provisioners, the AKS emulator")

        async def workspace(name: str) -> None:
            body = {
                "apiVersion": WORKSPACES_V1ALPHA1.api_version,
                "kind": "Workspace",
                "metadata": {"name": name, "namespace": namespace},
                "resource": {
                    "instanceType": "Standard_NC6s_v3",
                    "count": 1,
                    "labelSelector": {"matchLabels": {"apps": name, "kaito-test": test_id}},
                },
                "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
            }
            await client.create(WORKSPACES_V1ALPHA1, body)

        async def resource_ready(name: str, *procs: Replica) -> None:
            async def ready() -> bool:
                try:
                    ws_obj = await client.get(WORKSPACES, name, namespace)
                except NotFound:
                    return False
                return is_true(ws_obj, "ResourceReady")

            await wait_for(ready, 60, f"Workspace {name} ResourceReady", *procs)

        # -- 1. one leader per controller; only it works -------------------------------------
        (ws_leader, ws_follower), (prov_leader, prov_follower) = await asyncio.gather(
            check_one_leader(client, ws), check_one_leader(client, prov)
        )
        progress(f"leaders: {ws_leader.name}, {prov_leader.name}")
        await workspace("w1")
        await resource_ready("w1", ws_leader, prov_leader)
        progress("w1 ResourceReady (its Machine provisioned)")
        for follower in (ws_follower, prov_follower):
            reconciles = await follower.sample("controller_runtime_reconcile_total")
            assert reconciles == 0, f"the follower {follower.name} reconciled {reconciles} times"
            assert follower.first("controllers started") is None, follower.tail()

        # -- 2. pause the leaders past the lease; resume them after the takeover -------------
        paused = [
            Failover("SIGSTOP", ws, ws_leader, ws_follower, ws_leader.signal(signal.SIGSTOP)),
            Failover("SIGSTOP", prov, prov_leader, prov_follower, prov_leader.signal(signal.SIGSTOP)),
        ]  # fmt: skip
        await workspace("w2")  # queued in the paused leaders' watches when they resume
        await asyncio.gather(*(take_over(client, f) for f in paused))
        progress("the followers took over from the paused leaders")
        await resource_ready("w2", ws_follower, prov_follower)
        progress("w2 ResourceReady under the new leaders")
        resumed_at = {f.old.name: f.old.signal(signal.SIGCONT) for f in paused}
        codes = await asyncio.gather(*(f.old.exit_code(RENEW + 10) for f in paused))
        progress(f"the resumed old leaders exited {codes}")
        for f, code in zip(paused, codes, strict=True):
            assert code == 1, f"lost leadership must exit 1\n{f.old.tail()}"
            assert f.old.first("leader election lost") is not None, f.old.tail()
            assert f.old.first("leader lease released") is None, "released on a lost lease"

        # -- 3. replacements join as followers; kill the leaders -----------------------------
        replacements = [ws.spawn(), prov.spawn()]
        await asyncio.gather(*(r.started() for r in replacements))
        progress("replacements started as followers")
        for ctrl, r in zip(controllers, replacements, strict=True):
            assert (await ctrl.lease(client))["holderIdentity"] != r.identity
        killed = [
            Failover("SIGKILL", ws, ws_follower, replacements[0], ws_follower.signal(signal.SIGKILL)),
            Failover("SIGKILL", prov, prov_follower, replacements[1], prov_follower.signal(signal.SIGKILL)),
        ]  # fmt: skip
        await workspace("w3")
        await asyncio.gather(*(take_over(client, f) for f in killed))
        progress("the replacements took over from the killed leaders")
        await resource_ready("w3", *replacements)
        progress("w3 ResourceReady under the replacements")

        # -- cleanup through the running leaders (finalizers, agent pools, Nodes) -----------
        for name in ("w1", "w2", "w3"):
            await client.delete(WORKSPACES, name, namespace)

        async def all_gone() -> bool:
            left = await client.list_all(WORKSPACES, namespace)
            machines = await client.list_all(MACHINES, label_selector=f"kaito-test={test_id}")
            return not left and not machines

        await wait_for(all_gone, 60, "Workspaces and Machines deleted", *replacements)
        for r in (*replacements, emulator):
            r.signal(signal.SIGTERM)
        codes = [await r.exit_code(30) for r in (*replacements, emulator)]
        assert codes == [0, 0, 0], "\n".join(r.tail() for r in (*replacements, emulator))
        progress("cleaned up; the replacements and the emulator stopped with exit 0")

        # -- the audit log: who wrote what, when ----------------------------------------------
        everyone = {r.identity for c in controllers for r in c.replicas}
        audit = read_audit(control_plane.audit_log, everyone)
        rows = []
        for f in (*paused, *killed):
            rows.append(f.row(audit))
            # As a follower the new leader wrote nothing but its attempt(s) at the Lease.
            acquired_at, unrenewed = takeover(
                audit, f.ctrl.component, f.old.identity, f.new.identity
            )
            assert unrenewed >= LEASE - 0.01, f"{f.new.name} took over after {unrenewed:.3f}s"
            if f.step == "SIGSTOP":
                late = writes_after(audit, f.old.identity, acquired_at)
                assert late == [], f"{f.old.name} wrote after losing the lease: {late}"
                assert resumed_at[f.old.name] > acquired_at
            assert f.acquire_time - f.fault_at <= TAKEOVER_BOUND

        refused = {
            f.old.name: sum(" not sent: " in json.dumps(e) for e in f.old.events()) for f in paused
        }
        print("\nleader failover (s), lease 4s / renew 3s / retry 1s:")
        print(f"{'step':8} {'controller':21} {'acquire':>8} {'started':>8} {'1st write':>9}")
        for row in rows:
            print(
                f"{row['step']:8} {row['controller']:21} {row['to_acquire_s']:>8} "
                f"{row['to_controllers_started_s']!s:>8} {row['to_first_write_s']!s:>9}"
            )
        print(f"writes refused by the fence after SIGCONT: {refused}")
        progress("audit log checked")
    finally:
        for r in [emulator, *(r for c in controllers for r in c.replicas)]:
            if r.popen.poll() is None:
                r.popen.send_signal(signal.SIGCONT)
                r.popen.kill()
                r.popen.wait()
        mc_group = node_resource_group("kaito-rg", cluster, "eastus")  # the emulator's defaults
        for node in await client.list_all(
            NODES, label_selector=f"kubernetes.azure.com/cluster={mc_group}"
        ):
            await client.delete(NODES, node["metadata"]["name"])


async def take_over(client: Client, f: Failover) -> None:
    """Wait until ``f.new`` holds the Lease; note its acquireTime."""
    await f.ctrl.leader(client, [f.new])
    f.acquire_time = ts((await f.ctrl.lease(client))["acquireTime"])


def _read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value
    return out

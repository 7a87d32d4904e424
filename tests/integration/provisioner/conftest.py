"""The provisioner's test rig: real apiserver, the AKS emulator over HTTPS, the real SDK.

- ``machine_crd`` (session): the committed Machine CRD installed in the cluster.
- ``arm_tls`` (session): a CA (``kaito_dev.pki``) and the emulator's serving certificate;
  the SDK verifies it for real with ``connection_verify=<ca file>``.
- ``emulator``: an `AKSEmulator` per test with its own cluster name (its Nodes cannot
  collide with another test's). Teardown asserts it holds no agent pool and that no
  Node of its cluster is left in Kubernetes.
- ``pool_api``: `AzureAgentPoolAPI` (azure-mgmt-containerservice, async) pointed at it.
- ``rig``: starts provisioners (``await rig.start(**config overrides)``), creates
  Machines labelled for this test only, waits on them; teardown deletes the test's
  Machines through the running provisioner and asserts none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.api.crds import MACHINE_CRD
from kaito.api.machine import MACHINES
from kaito.provisioner.app import Provisioner
from kaito.provisioner.azure import AzureAgentPoolAPI
from kaito.provisioner.config import ProvisionerConfig
from kaito.provisioner.credentials import StaticTokenCredential
from kaito.runtime.client import Client
from kaito.runtime.errors import AlreadyExists, NotFound
from kaito.runtime.manager import ManagerOptions
from kaito.runtime.pki import CertificateAuthority
from kaito.runtime.resource import CUSTOMRESOURCEDEFINITIONS, NODES
from kaito_dev.aks import AKSEmulator, EmulatorConfig
from kaito_dev.aks.nodes import node_resource_group
from tests.integration.polling import poll_until

CRD_PATH = Path(__file__).resolve().parents[3] / "deploy" / "crds" / MACHINE_CRD.file_name

Obj = dict[str, Any]

# Fast settings for tests: the emulator answers in tenths of seconds, the SDK polls
# every 50 ms and retries transient errors twice with ~no backoff.
FAST = {
    "polling_interval": 0.05,
    "registration_timeout": 60.0,
    "gc_interval": 3600.0,
    "gc_min_age": 30.0,
    "workers": 20,
    "lro_wait": 20.0,
    "launch_backoff_base": 0.2,
    "launch_backoff_max": 1.0,
    "retry_total": 2,
    "retry_backoff_factor": 0.05,
}


@dataclass(frozen=True)
class ArmTls:
    ca_file: str
    server_context: ssl.SSLContext


@pytest.fixture(scope="session")
def arm_tls(tmp_path_factory: pytest.TempPathFactory) -> ArmTls:
    d = tmp_path_factory.mktemp("arm-tls")
    ca = CertificateAuthority.create("aks-emulator-test-ca")
    ca_file, _ = ca.write(d)
    crt, key = ca.issue_serving("aks-emulator", ["127.0.0.1", "localhost"])
    (d / "tls.crt").write_bytes(crt)
    (d / "tls.key").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(d / "tls.crt", d / "tls.key")
    return ArmTls(str(ca_file), ctx)


def crd_body() -> Obj:
    return dict(yaml.safe_load(CRD_PATH.read_text()))


@pytest.fixture(scope="session")
async def machine_crd(client: Client) -> None:
    body = crd_body()
    try:
        await client.create(CUSTOMRESOURCEDEFINITIONS, body)
    except AlreadyExists:
        current = await client.get(CUSTOMRESOURCEDEFINITIONS, body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        await client.update(CUSTOMRESOURCEDEFINITIONS, body)
    async with asyncio.timeout(30):
        while True:
            crd = await client.get(CUSTOMRESOURCEDEFINITIONS, body["metadata"]["name"])
            conds = {
                c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or ()
            }
            if conds.get("Established") == "True":
                break
            await asyncio.sleep(0.1)
        while True:  # the REST endpoint appears a moment after Established
            try:
                await client.list(MACHINES)
                return
            except NotFound:
                await asyncio.sleep(0.1)


def cluster_nodes_selector(cfg: EmulatorConfig) -> str:
    return (
        "kubernetes.azure.com/cluster="
        f"{node_resource_group(cfg.resource_group, cfg.cluster_name, cfg.location)}"
    )


async def emulator_nodes(client: Client, emu: AKSEmulator) -> list[Obj]:
    return await client.list_all(NODES, label_selector=cluster_nodes_selector(emu.config))


@pytest.fixture
async def emulator(client: Client, arm_tls: ArmTls) -> AsyncIterator[AKSEmulator]:
    cfg = EmulatorConfig(
        cluster_name=f"aks{uuid.uuid4().hex[:8]}",
        create_latency=0.3,
        delete_latency=0.1,
        heartbeat_interval=0,
    )
    emu = AKSEmulator(client, cfg, tls=arm_tls.server_context)
    await emu.start()
    try:
        yield emu
        await emu.wait_idle()
        assert not emu.pools, f"leaked agent pools: {sorted(emu.pools)}"
        leaked = [n["metadata"]["name"] for n in await emulator_nodes(client, emu)]
        assert not leaked, f"leaked Nodes: {leaked}"
    finally:
        await emu.stop()
        for node in await emulator_nodes(client, emu):  # never leave Nodes to later tests
            with contextlib.suppress(NotFound):
                await client.delete(NODES, node["metadata"]["name"])


def make_api(emu: AKSEmulator, tls: ArmTls, **kw: Any) -> AzureAgentPoolAPI:
    cfg = emu.config
    return AzureAgentPoolAPI(
        subscription_id=cfg.subscription_id,
        resource_group=cfg.resource_group,
        cluster_name=cfg.cluster_name,
        credential=kw.pop("credential", StaticTokenCredential("test-token")),
        base_url=emu.url,
        ca_file=tls.ca_file,
        polling_interval=kw.pop("polling_interval", 0.05),
        retry_total=kw.pop("retry_total", 2),
        retry_backoff_factor=kw.pop("retry_backoff_factor", 0.05),
        **kw,
    )


@pytest.fixture
async def pool_api(emulator: AKSEmulator, arm_tls: ArmTls) -> AsyncIterator[AzureAgentPoolAPI]:
    api = make_api(emulator, arm_tls)
    try:
        yield api
    finally:
        await api.close()


def condition(machine: Obj | None, type_: str) -> Obj | None:
    if machine is None:
        return None
    for cond in machine.get("status", {}).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return None


def is_ready(machine: Obj | None) -> bool:
    cond = condition(machine, "Ready")
    return cond is not None and cond["status"] == "True"


class Rig:
    """Provisioners and Machines for one test, all labelled ``kaito-test=<id>``."""

    def __init__(self, client: Client, emu: AKSEmulator, tls: ArmTls) -> None:
        self.client = client
        self.emulator = emu
        self.tls = tls
        self.test_id = uuid.uuid4().hex[:10]
        self.provisioner: Provisioner | None = None
        self._task: asyncio.Task[None] | None = None
        self._api: AzureAgentPoolAPI | None = None

    def config(self, **overrides: Any) -> ProvisionerConfig:
        cfg = self.emulator.config
        base = ProvisionerConfig(
            subscription_id=cfg.subscription_id,
            resource_group=cfg.resource_group,
            cluster_name=cfg.cluster_name,
            location=cfg.location,
            arm_base_url=self.emulator.url,
            arm_ca_bundle=self.tls.ca_file,
            machine_selector=f"kaito.sh/workspace,kaito-test={self.test_id}",
            **FAST,  # type: ignore[arg-type]
        )
        return replace(base, **overrides)

    async def start(self, **overrides: Any) -> Provisioner:
        """Start a provisioner (a fresh process, as far as state goes: new API client)."""
        assert self._task is None, "stop or kill the running provisioner first"
        config = self.config(**overrides)
        self._api = make_api(
            self.emulator,
            self.tls,
            polling_interval=config.polling_interval,
            retry_total=config.retry_total,
            retry_backoff_factor=config.retry_backoff_factor,
        )
        self.provisioner = Provisioner(
            self.client,
            self._api,
            config,
            manager_options=ManagerOptions(
                component="gpu-provisioner",
                metrics_bind_address="127.0.0.1:0",
                health_probe_bind_address="0",
                graceful_shutdown_timeout=5,
            ),
        )
        self._task = asyncio.create_task(self.provisioner.run(), name="provisioner")
        return self.provisioner

    async def stop(self) -> None:
        """Graceful stop (SIGTERM)."""
        if self._task is None:
            return
        assert self.provisioner is not None
        self.provisioner.stop()
        try:
            async with asyncio.timeout(15):
                await self._task
        finally:
            await self._close()

    async def kill(self) -> None:
        """Cancel the provisioner wherever it is (the closest an asyncio test gets to kill -9)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._close()

    async def _close(self) -> None:
        self._task = None
        if self._api is not None:
            await self._api.close()
            self._api = None

    # -- Machines --------------------------------------------------------------------------

    def machine_body(
        self,
        name: str,
        *,
        instance_type: str | None = "Standard_NC12s_v3",
        storage: str | None = "120Gi",
        labels: dict[str, str] | None = None,
        **spec: Any,
    ) -> Obj:
        requirements = [
            {"key": "karpenter.sh/provisioner-name", "operator": "In", "values": ["default"]},
        ]
        if instance_type is not None:
            requirements.append(
                {
                    "key": "node.kubernetes.io/instance-type",
                    "operator": "In",
                    "values": [instance_type],
                }
            )
        body: Obj = {
            "metadata": {
                "name": name,
                "labels": {
                    "kaito.sh/workspace": "ws",
                    "kaito.sh/workspacenamespace": "default",
                    "kaito-test": self.test_id,
                    **(labels or {}),
                },
            },
            "spec": {
                "requirements": requirements,
                "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
                "resources": {"requests": {"storage": storage}} if storage else {},
                "machineTemplateRef": {"name": name},
                **spec,
            },
        }
        return body

    async def create_machine(self, name: str, **kw: Any) -> Obj:
        return await self.client.create(MACHINES, self.machine_body(name, **kw))

    async def machine(self, name: str) -> Obj | None:
        try:
            return await self.client.get(MACHINES, name)
        except NotFound:
            return None

    async def wait_machine(
        self, name: str, until: Callable[[Obj | None], bool], *, timeout: float = 20.0
    ) -> Obj | None:
        """Poll the apiserver until ``until(machine)``; the machine (None when gone)."""
        return await poll_until(
            lambda: self.machine(name), until, timeout=timeout, what=f"machine {name}"
        )

    async def wait_ready(self, name: str, timeout: float = 20.0) -> Obj:
        machine = await self.wait_machine(name, is_ready, timeout=timeout)
        assert machine is not None
        return machine

    async def wait_all_ready(self, names: list[str], timeout: float = 30.0) -> None:
        """One LIST per tick for all of them (cheaper than a GET per Machine per tick)."""
        pending = set(names)
        async with asyncio.timeout(timeout):
            while pending:
                for m in await self.my_machines():
                    if is_ready(m):
                        pending.discard(m["metadata"]["name"])
                if pending:
                    await asyncio.sleep(0.05)

    async def wait_reason(self, name: str, reason: str, timeout: float = 20.0) -> Obj:
        def has_reason(m: Obj | None) -> bool:
            cond = condition(m, "MachineLaunched")
            return cond is not None and cond.get("reason") == reason

        machine = await self.wait_machine(name, has_reason, timeout=timeout)
        assert machine is not None
        return machine

    async def delete_machine(self, name: str, *, wait: bool = True, timeout: float = 20.0) -> None:
        with contextlib.suppress(NotFound):
            await self.client.delete(MACHINES, name)
        if wait:
            await self.wait_machine(name, lambda m: m is None, timeout=timeout)

    async def my_machines(self) -> list[Obj]:
        return await self.client.list_all(MACHINES, label_selector=f"kaito-test={self.test_id}")


@pytest.fixture
async def rig(
    client: Client, machine_crd: None, emulator: AKSEmulator, arm_tls: ArmTls
) -> AsyncIterator[Rig]:
    r = Rig(client, emulator, arm_tls)
    try:
        yield r
        # Delete what the test left through a running provisioner: finalizers must run.
        leftovers = await r.my_machines()
        if leftovers:
            if r._task is None:
                await r.start()
            for m in leftovers:
                await r.delete_machine(m["metadata"]["name"], wait=False)
            deadline = time.monotonic() + 30
            while await r.my_machines() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        assert await r.my_machines() == [], "leaked Machines"
    finally:
        await r.stop()
        for m in await r.my_machines():  # a failed test must not poison the next one
            with contextlib.suppress(NotFound):
                await client.patch(
                    MACHINES, m["metadata"]["name"], {"metadata": {"finalizers": []}}
                )
                await client.delete(MACHINES, m["metadata"]["name"])

"""kube-apiserver down during an agent-pool deletion: the deletion still converges.

Issue 14's hang: the AKS emulator's background delete crashed on
``ConnectionRefusedError`` when kube-apiserver went away mid-delete, the pool stayed
``Deleting`` forever and the gpu-provisioner waited on it silently. Here the emulator
reaches the (real) apiserver through `ApiserverLink`, a TCP hop the test takes down
and brings back: while down its port refuses connections and open ones are cut, which
is what the emulator sees when kube-apiserver is killed and restarted (the session's
apiserver itself cannot be killed without failing every other test in the session).
The provisioner talks to the apiserver directly, as it would from another pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from kaito.provisioner.azure import AgentPoolSpec
from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.meta import Obj
from kaito.runtime.resource import EVENTS, NODES
from kaito_dev.aks import AKSEmulator, EmulatorConfig, Op

from .conftest import ArmTls, Rig, condition, emulator_nodes, make_api


class ApiserverLink:
    """A TCP hop to kube-apiserver that can go down (port closed, connections cut)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.target_port = host, port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open -= {writer, up_writer}


@pytest.fixture
async def link(client: Client) -> AsyncIterator[ApiserverLink]:
    target = urllib.parse.urlsplit(client.config.server)
    assert target.hostname and target.port
    hop = ApiserverLink(target.hostname, target.port)
    await hop.up()
    try:
        yield hop
    finally:
        if hop._server is not None:
            await hop.down()


@pytest.fixture
async def emulator(
    client: Client, arm_tls: ArmTls, link: ApiserverLink
) -> AsyncIterator[AKSEmulator]:
    """The conftest's emulator, but reaching the apiserver through ``link``."""
    host = urllib.parse.urlsplit(client.config.server).hostname
    through = Client(replace(client.config, server=f"https://{host}:{link.port}"))
    cfg = EmulatorConfig(
        cluster_name=f"aks{uuid.uuid4().hex[:8]}",
        create_latency=0.3,
        delete_latency=0.5,
        heartbeat_interval=0,
        apiserver_retry_initial=0.2,
        apiserver_retry_cap=1.0,
    )
    emu = AKSEmulator(through, cfg, tls=arm_tls.server_context)
    await emu.start()
    try:
        yield emu
        await emu.wait_idle()
        assert not emu.pools, f"leaked agent pools: {sorted(emu.pools)}"
        leaked = [n["metadata"]["name"] for n in await emulator_nodes(client, emu)]
        assert not leaked, f"leaked Nodes: {leaked}"
    finally:
        await emu.stop()
        await through.close()
        for node in await emulator_nodes(client, emu):
            with contextlib.suppress(NotFound):
                await client.delete(NODES, node["metadata"]["name"])


async def events_of(client: Client, name: str) -> list[Obj]:
    page = await client.list(EVENTS, field_selector=f"involvedObject.name={name}")
    return list(page["items"])


async def wait_deleting(rig: Rig, name: str) -> None:
    async with asyncio.timeout(20):
        while not (name in rig.emulator.pools and rig.emulator.pools[name].state == "Deleting"):
            await asyncio.sleep(0.02)


async def test_apiserver_down_mid_pool_delete_then_back_converges_and_reports_the_stall(
    rig: Rig, client: Client, link: ApiserverLink
) -> None:
    await rig.start(lro_wait=0.5, delete_stall_after=2.0)
    await rig.create_machine("outage1")
    await rig.wait_ready("outage1")

    await rig.delete_machine("outage1", wait=False)
    await wait_deleting(rig, "outage1")
    await link.down()  # kube-apiserver "killed" before the emulator removes the Node
    started = time.monotonic()
    await asyncio.sleep(3.5)  # past the provisioner's stall deadline
    pool = rig.emulator.pools["outage1"]
    assert pool.state == "Deleting" and pool.deleting, "the delete operation is still alive"
    machine = await rig.machine("outage1")
    stalled = condition(machine, "MachineTerminating")
    assert stalled is not None, machine
    assert stalled["status"] == "False" and stalled["reason"] == "AgentPoolDeleteStalled"
    assert "the DELETE was re-issued" in stalled["message"]
    assert rig.emulator.count(Op.DELETE, pool="outage1") >= 2, "DELETE re-issued"
    reasons = {e["reason"] for e in await events_of(client, "outage1")}
    assert "AgentPoolDeleteStalled" in reasons, reasons

    await link.up()  # kube-apiserver back on the same address
    await rig.wait_machine("outage1", lambda m: m is None, timeout=20)
    converged = time.monotonic() - started
    assert not rig.emulator.pools, "the pool is gone"
    assert await emulator_nodes(client, rig.emulator) == []
    assert converged < 15, f"converged {converged:.1f}s after the outage began"


async def test_a_pool_whose_delete_operation_died_is_deleted_by_the_reissued_delete(
    rig: Rig, client: Client
) -> None:
    """The provisioner's second line: whatever leaves a pool ``Deleting`` with no
    operation behind it (here: the task cancelled, as the emulator's crashed before the
    fix, a scripted fault), the re-issued DELETE starts a new one."""
    rig.emulator.config.delete_latency = 0.3
    await rig.start(lro_wait=0.5, delete_stall_after=1.5)
    await rig.create_machine("outage2")
    await rig.wait_ready("outage2")
    await rig.delete_machine("outage2", wait=False)
    await wait_deleting(rig, "outage2")
    task = rig.emulator.pools["outage2"].task
    assert task is not None
    task.cancel()

    await rig.wait_machine("outage2", lambda m: m is None, timeout=15)
    assert not rig.emulator.pools
    assert rig.emulator.count(Op.DELETE, pool="outage2") >= 2
    reasons = {e["reason"] for e in await events_of(client, "outage2")}
    assert "AgentPoolDeleteStalled" in reasons, reasons


async def test_apiserver_down_when_a_node_turns_ready_it_still_turns_ready(
    client: Client, arm_tls: ArmTls, link: ApiserverLink
) -> None:
    """The emulator's turn-Ready task died with the first refused connection (nobody
    awaited it, nothing was logged): the Node stayed NotReady and tainted for good and its
    Machine waited on ``NodeNotReady``. Now it retries until the apiserver answers."""
    host = urllib.parse.urlsplit(client.config.server).hostname
    through = Client(replace(client.config, server=f"https://{host}:{link.port}"))
    cfg = EmulatorConfig(
        cluster_name=f"aks{uuid.uuid4().hex[:8]}",
        create_latency=0.05,
        delete_latency=0.05,
        node_ready_delay=0.5,
        heartbeat_interval=0,
        apiserver_retry_initial=0.2,
        apiserver_retry_cap=1.0,
    )
    emu = AKSEmulator(through, cfg, tls=arm_tls.server_context)
    await emu.start()
    api = make_api(emu, arm_tls)
    try:
        await api.create(
            AgentPoolSpec(name="late1", vm_size="Standard_NC6s_v3", os_disk_size_gb=128)
        )
        [node] = await emulator_nodes(client, emu)
        await link.down()  # before the Node turns Ready (0.5 s after registering)
        await asyncio.sleep(2)
        await link.up()
        async with asyncio.timeout(10):
            while True:
                node = await client.get(NODES, node["metadata"]["name"])
                ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
                if ready[0]["status"] == "True" and not node["spec"].get("taints"):
                    break
                await asyncio.sleep(0.1)
        await api.delete("late1")
        await emu.wait_idle()
        assert await emulator_nodes(client, emu) == []
    finally:
        await api.close()
        await emu.stop()
        await through.close()
        for leftover in await emulator_nodes(client, emu):
            with contextlib.suppress(NotFound):
                await client.delete(NODES, leftover["metadata"]["name"])

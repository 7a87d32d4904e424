"""`kaito dev cluster-dns` answers real DNS queries from the apiserver's Services and Endpoints.

The real command, as the stack starts it (on a loopback port here: the stack binds port
53 of the pods' gateway address), against the session's real apiserver. That control
plane runs no endpoints controller (its nodes are simulated), so the test writes the
Endpoints a StatefulSet's pods would get (hostnames under the headless Service), as the
controller does; the real-node test (test_multinode_inference.py) runs it for real.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from kaito.runtime.client import Client
from kaito.runtime.resource import SERVICES
from kaito_dev.controlplane import free_port
from kaito_dev.realnode.clusterdns import ENDPOINTS

pytestmark = pytest.mark.cluster

NS = "default"


@pytest.fixture
def dns(kubeconfig: str, tmp_path: Path) -> Iterator[int]:
    port = free_port()  # a TCP port free now; the server binds UDP on the same number
    state = tmp_path / "dns.json"
    log = open(tmp_path / "dns.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaito_dev", "cluster-dns", "--kubeconfig", kubeconfig,
         "--host", "127.0.0.1", "--port", str(port), "--state-file", str(state)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not state.exists():
            assert proc.poll() is None, (tmp_path / "dns.log").read_text()
            assert time.monotonic() < deadline, "cluster-dns not serving after 30s"
            time.sleep(0.1)
        assert json.loads(state.read_text()) == {"address": "127.0.0.1", "port": port}
        yield port
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0, (tmp_path / "dns.log").read_text()
        log.close()


async def ask(port: int, name: str, qtype: str = "A") -> tuple[int, list[str]]:
    query = DNSRecord.question(name, qtype)
    raw = await asyncio.to_thread(query.send, "127.0.0.1", port, False, 5)
    reply = DNSRecord.parse(raw)
    assert reply.header.id == query.header.id
    return reply.header.rcode, [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


async def test_services_and_statefulset_pods_resolve_and_the_rest_is_nxdomain(
    client: Client, dns: int
) -> None:
    svc = await client.create(
        SERVICES,
        {
            "metadata": {"name": "dns-web", "namespace": NS},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": "x"}},
        },
    )
    cluster_ip = svc["spec"]["clusterIP"]
    await client.create(
        SERVICES,
        {
            "metadata": {"name": "dns-group-headless", "namespace": NS},
            "spec": {
                "clusterIP": "None",
                "ports": [{"port": 5000, "protocol": "TCP"}],
                "selector": {"app": "group"},
            },
        },
    )
    base = f"dns-group-headless.{NS}.svc.cluster.local"
    # A name that appears after the server started resolves at once (a refresh on miss).
    assert await ask(dns, f"dns-web.{NS}.svc.cluster.local") == (RCODE.NOERROR, [cluster_ip])
    assert await ask(dns, f"dns-group-0.{base}") == (RCODE.NXDOMAIN, [])

    await client.create(
        ENDPOINTS,
        {
            "metadata": {"name": "dns-group-headless", "namespace": NS},
            "subsets": [
                {
                    "addresses": [
                        {"ip": "10.244.1.7", "hostname": "dns-group-0"},
                        {"ip": "10.244.2.9", "hostname": "dns-group-1"},
                    ],
                    "ports": [{"port": 5000, "protocol": "TCP"}],
                }
            ],
        },
    )
    assert await ask(dns, f"dns-group-0.{base}") == (RCODE.NOERROR, ["10.244.1.7"])
    assert await ask(dns, f"DNS-GROUP-1.{base}") == (RCODE.NOERROR, ["10.244.2.9"])
    assert await ask(dns, base) == (RCODE.NOERROR, ["10.244.1.7", "10.244.2.9"])
    # An existing name asked for IPv6: no error, no address (glibc asks A and AAAA).
    assert await ask(dns, f"dns-group-0.{base}", "AAAA") == (RCODE.NOERROR, [])
    assert await ask(dns, f"dns-group-2.{base}") == (RCODE.NXDOMAIN, [])
    assert await ask(dns, f"dns-web.{NS}.svc.cluster.local.{NS}.svc.cluster.local") == (
        RCODE.NXDOMAIN,
        [],
    )

    # Deleted: gone within a refresh round.
    await client.delete(SERVICES, "dns-web", NS)
    deadline = time.monotonic() + 10
    while (await ask(dns, f"dns-web.{NS}.svc.cluster.local"))[0] != RCODE.NXDOMAIN:
        assert time.monotonic() < deadline, "a deleted Service still resolves after 10s"
        await asyncio.sleep(0.2)
    await client.delete(ENDPOINTS, "dns-group-headless", NS)
    await client.delete(SERVICES, "dns-group-headless", NS)

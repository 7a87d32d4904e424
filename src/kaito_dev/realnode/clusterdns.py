"""The local cluster's DNS: what CoreDNS serves a real cluster, for the real nodes' pods.

Without it pods use the host's resolver and the kubelet warns ``MissingClusterDNS``:
``<svc>.<ns>.svc`` and a StatefulSet pod's stable name ``<pod>.<headless>.<ns>.svc``
(a multi-node inference group's ranks find each other by it) do not resolve. This is a
DNS server speaking the real protocol on UDP port 53 of the host's pod-reachable
address; the kubelets get ``--cluster-dns=<that address> --cluster-domain=cluster.local``,
so every pod's ``/etc/resolv.conf`` names it with the cluster's search path
(``<ns>.svc.cluster.local svc.cluster.local cluster.local``, ``ndots:5``), as on a real
cluster. It serves, as CoreDNS's ``kubernetes`` plugin does:

- ``<svc>.<ns>.svc.<domain>``: the Service's ClusterIP, or for a headless Service the
  addresses of its Endpoints (with ``publishNotReadyAddresses`` those of pods not yet
  Ready too, which the endpoints controller lists as addresses);
- ``<hostname>.<svc>.<ns>.svc.<domain>``: the address of the endpoint with that
  hostname (the endpoints controller sets it for pods whose ``spec.subdomain`` is the
  Service, i.e. a StatefulSet's pods under its ``serviceName``);
- any other name in the domain: NXDOMAIN (a name with an A record but asked for another
  type: an empty answer); a name outside it: forwarded to the host's resolvers
  (``/etc/resolv.conf``), SERVFAIL when they do not answer.

Records come from listing Services and Endpoints: every `REFRESH_S`, and again when a
name in the domain is missing (one listing begun after the query; misses at the same
time share it), so a pod that just got its IP resolves without waiting for the next
round. TTLs are short (`TTL`).
UDP only (answers are a few records; nothing here needs truncation to TCP).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

import structlog
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.meta import Obj
from kaito.runtime.resource import SERVICES, Resource

__all__ = ["ClusterDNS", "add_arguments", "records"]

log = structlog.get_logger("kaito_dev.realnode.clusterdns")

ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints")
DOMAIN = "cluster.local"
TTL = 5
REFRESH_S = 1.0
FORWARD_TIMEOUT_S = 2.0


def records(services: Iterable[Obj], endpoints: Iterable[Obj], domain: str) -> dict[str, list[str]]:
    """Fully qualified lower-case names (trailing dot) -> their IPv4 addresses."""
    out: dict[str, list[str]] = {}
    by_name = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
    for svc in services:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        base = f"{name}.{ns}.svc.{domain}.".lower()
        cluster_ip = svc.get("spec", {}).get("clusterIP")
        if cluster_ip and cluster_ip != "None":
            out[base] = [cluster_ip]
            continue
        # Headless: the endpoints' addresses, and each named one under its hostname.
        addresses: list[str] = []
        for subset in (by_name.get((ns, name)) or {}).get("subsets") or ():
            for address in subset.get("addresses") or ():
                ip = address.get("ip")
                if not ip:
                    continue
                if ip not in addresses:
                    addresses.append(ip)
                if address.get("hostname"):
                    out.setdefault(f"{address['hostname']}.{base}".lower(), []).append(ip)
        if addresses:
            out[base] = addresses
    return out


def upstream_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    servers = []
    with contextlib.suppress(OSError):
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                servers.append(parts[1])
    return servers


class ClusterDNS(asyncio.DatagramProtocol):
    """The server: `start` binds UDP ``host:port`` and keeps the records fresh."""

    def __init__(
        self,
        client: Client,
        *,
        host: str,
        port: int = 53,
        domain: str = DOMAIN,
        upstream: list[str] | None = None,
    ) -> None:
        self.client = client
        self.host, self.port = host, port
        self.domain = domain.strip(".").lower()
        self.suffix = f".{self.domain}."
        self.upstream = [s for s in (upstream or []) if s != host]
        self.records: dict[str, list[str]] = {}
        self.refreshed = 0.0
        self.refresh_began = 0.0
        self._refresh_lock = asyncio.Lock()
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.queries = 0

    async def refresh(self, *, newer_than: float | None = None) -> None:
        """List Services and Endpoints again; with ``newer_than``, only when no listing
        began after that time (queries missing at once share one listing)."""
        async with self._refresh_lock:
            if newer_than is not None and self.refresh_began > newer_than:
                return
            self.refresh_began = time.monotonic()
            services = await self.client.list_all(SERVICES)
            endpoints = await self.client.list_all(ENDPOINTS)
            fresh = records(services, endpoints, self.domain)
            if fresh != self.records:
                log.info("cluster dns records", names=len(fresh))
            self.records = fresh
            self.refreshed = time.monotonic()

    async def start(self) -> None:
        await self.refresh()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.host, self.port)
        )
        self._transport = transport
        self._spawn(self._refresh_forever())
        log.info("cluster dns serving", address=f"{self.host}:{self.port}", domain=self.domain,
                 upstream=self.upstream)  # fmt: skip

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        for task in self._tasks:
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
            except Exception as e:  # the apiserver restarting: keep serving what we have
                log.warning("cluster dns refresh failed", error=str(e))

    # -- the protocol -------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._spawn(self._answer(data, addr))

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            request = DNSRecord.parse(data)
        except Exception as e:  # not DNS: nothing to answer
            log.warning("cluster dns: unparsable query", client=addr[0], error=str(e))
            return
        self.queries += 1
        reply = await self.resolve(request, data)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    async def resolve(self, request: DNSRecord, raw: bytes | None = None) -> bytes | None:
        qname = str(request.q.qname).lower()
        if qname != f"{self.domain}." and not qname.endswith(self.suffix):
            return await self._forward(raw if raw is not None else request.pack(), request)
        asked = time.monotonic()
        ips = self.records.get(qname)
        if ips is None:
            try:
                await self.refresh(newer_than=asked)
            except Exception as e:
                log.warning("cluster dns refresh failed", error=str(e))
            ips = self.records.get(qname)
        reply = request.reply()
        reply.header.aa = 1
        if ips is None and qname != f"{self.domain}.":
            reply.header.rcode = RCODE.NXDOMAIN
        elif ips and request.q.qtype in (QTYPE.A, QTYPE.ANY):
            for ip in ips:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=TTL))
        log.debug("cluster dns answer", name=qname, type=QTYPE[request.q.qtype], ips=ips)
        return bytes(reply.pack())

    async def _forward(self, raw: bytes, request: DNSRecord) -> bytes:
        for server in self.upstream:
            try:
                answer = await asyncio.wait_for(
                    asyncio.to_thread(DNSRecord.parse(raw).send, server, 53, False, 2),
                    FORWARD_TIMEOUT_S + 1,
                )
                return bytes(answer)
            except (OSError, TimeoutError) as e:
                log.warning("cluster dns: upstream did not answer", server=server, error=str(e))
        reply = request.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return bytes(reply.pack())


# -- `kaito dev cluster-dns` ------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", default=None, help="default $KUBECONFIG")
    p.add_argument("--host", required=True, help="the address pods reach (port 53 there)")
    p.add_argument("--port", type=int, default=53, help="default 53 (what resolv.conf uses)")
    p.add_argument("--domain", default=DOMAIN, help=f"the cluster domain; default {DOMAIN}")
    p.add_argument("--state-file", type=Path, default=None, help="written once serving")
    p.set_defaults(func=cmd_cluster_dns)


def cmd_cluster_dns(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from kaito.runtime.entrypoint import run_until_stopped

    config = await ClientConfig.from_kubeconfig(args.kubeconfig)
    async with Client(config) as client:
        server = ClusterDNS(
            client, host=args.host, port=args.port, domain=args.domain,
            upstream=upstream_resolvers(),
        )  # fmt: skip
        try:
            await server.start()
        except OSError as e:
            print(f"kaito dev cluster-dns: --host/--port {args.host}:{args.port}: {e}",
                  file=sys.stderr)  # fmt: skip
            return 2
        if args.state_file is not None:
            args.state_file.write_text(json.dumps({"address": args.host, "port": args.port}))
        stopped = asyncio.Event()

        async def serve() -> None:
            await stopped.wait()

        try:
            return await run_until_stopped(serve, stopped.set)
        finally:
            server.stop()

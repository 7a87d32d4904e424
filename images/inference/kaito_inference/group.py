"""One model across several nodes: a group of server processes, one per pod.

A StatefulSet's pods run the same command. Each finds its rank in the pod name's
ordinal (``<ws>-2`` is rank 2); ``--group-hosts`` names every rank's address, rank 0
first (the headless Service's stable DNS names). vLLM's own multi-node executor runs the
model: rank 0 is vLLM's head (``node_rank`` 0, the engine and the scheduler) and serves
the HTTP API; every other rank runs vLLM's headless workers (``node_rank`` i) and joins
the head's ``torch.distributed`` group at ``<rank 0>:--group-port``. Tensor parallelism
stays within a node, pipeline parallelism spans the nodes.

Why not Ray: vLLM's Ray executor refuses the CPU platform the tests run on ("current
platform cpu does not support ray"), while its multiprocessing executor spans nodes on
both CPUs and GPUs, so the tests run the production path.

Health across the group, which vLLM does not report: every rank serves ``/health`` on
the HTTP port. A worker answers 503 ``joining`` until its vLLM workers have joined the
head, then 200 ``joined``. Rank 0 polls the workers: while it loads, its ``/health``
says how many ranks have joined; once serving, a worker that stops answering for
`LOST_AFTER_S` makes rank 0 unhealthy (its liveness probe fails and the pod restarts).
A worker polls rank 0 the same way and exits when rank 0 is lost, so a restarted head
never waits for workers still bound to the previous one.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import structlog

from .config import ConfigError

log = structlog.get_logger(__name__)

POLL_INTERVAL_S = 1.0
LOST_AFTER_S = 5.0
"""A rank that has not answered for this long is lost (a pod restart takes longer)."""

TERMINATION_LOG_ENV = "KAITO_TERMINATION_LOG"
"""Where the reason a rank gives up is written (default: kubelet's termination log)."""

_ORDINAL = re.compile(r"-(\d+)$")

BOOT_ID = uuid.uuid4().hex[:12]
"""This process's id in ``/health``: peers tell a restarted rank from the one they knew."""


@dataclass(frozen=True, kw_only=True)
class Group:
    """The ranks of a multi-node group and this process's place in it."""

    hosts: tuple[str, ...]
    """Each rank's address (``host`` or ``host:port`` of its HTTP API), rank 0 first."""
    rank: int
    port: int
    """rank 0's ``torch.distributed`` port (vLLM's ``master_port``)."""
    http_port: int

    @property
    def size(self) -> int:
        return len(self.hosts)

    @property
    def is_head(self) -> bool:
        return self.rank == 0

    @property
    def head_host(self) -> str:
        return self.hosts[0].rsplit(":", 1)[0] if ":" in self.hosts[0] else self.hosts[0]

    def health_url(self, rank: int) -> str:
        host = self.hosts[rank]
        if ":" not in host:
            host = f"{host}:{self.http_port}"
        return f"http://{host}/health"

    def vllm_args(self) -> dict[str, object]:
        """vLLM's engine arguments for this rank (its multi-node multiprocessing executor)."""
        return {
            "distributed_executor_backend": "mp",
            "nnodes": self.size,
            "node_rank": self.rank,
            "master_addr": self.head_host,
            "master_port": self.port,
        }


def write_termination_message(message: str) -> None:
    """``<Reason>: <message>`` for the pod's status (``lastState.terminated.message``),
    where the controller reads why the container stopped; best effort."""
    path = os.environ.get(TERMINATION_LOG_ENV, "/dev/termination-log")
    try:
        with open(path, "w") as out:
            out.write(message[:4000])
    except OSError as exc:
        log.warning("termination message not written", path=path, error=str(exc))


def rank_from_name(name: str) -> int:
    """The StatefulSet ordinal at the end of a pod name (``ws-1`` -> 1)."""
    match = _ORDINAL.search(name)
    if match is None:
        raise ConfigError(
            f"--group-rank not given and the pod name {name!r} has no StatefulSet ordinal "
            "(<name>-<n>); set POD_NAME or --group-rank"
        )
    return int(match.group(1))


def make_group(
    hosts: str | None, rank: int | None, port: int, http_port: int, *, pod_name: str | None = None
) -> Group | None:
    """The group from the command line; None for a single-node server."""
    if not hosts:
        if rank not in (None, 0):
            raise ConfigError(f"--group-rank {rank} needs --group-hosts (the ranks' addresses)")
        return None
    names = tuple(h.strip() for h in hosts.split(",") if h.strip())
    if len(names) < 2:
        raise ConfigError(
            f"--group-hosts {hosts!r}: a group needs at least 2 ranks; leave it out for one node"
        )
    if rank is None:
        rank = rank_from_name(pod_name or os.environ.get("POD_NAME") or socket.gethostname())
    if not 0 <= rank < len(names):
        raise ConfigError(
            f"--group-rank {rank}: --group-hosts names {len(names)} ranks (0..{len(names) - 1})"
        )
    return Group(hosts=names, rank=rank, port=port, http_port=http_port)


@dataclass(kw_only=True)
class RankState:
    joined: bool = False
    last_seen: float | None = None
    error: str = "not answered yet"
    boot: str | None = None
    """The process id the rank's ``/health`` reports: a new one means it restarted."""


@dataclass(kw_only=True)
class GroupWatch:
    """Polls the other ranks' ``/health``; what rank 0's (and a worker's) health reports."""

    group: Group
    peers: dict[int, RankState] = field(default_factory=dict)
    lost: str | None = None

    def __post_init__(self) -> None:
        others = range(1, self.group.size) if self.group.is_head else (0,)
        self.peers = {r: RankState() for r in others}

    @property
    def joined(self) -> int:
        """Ranks joined, this one included."""
        return 1 + sum(1 for s in self.peers.values() if s.joined)

    def summary(self) -> str:
        return f"{self.joined}/{self.group.size} ranks joined"

    def waiting_for(self) -> list[str]:
        return [
            f"rank {r} ({self.group.hosts[r]}): {s.error}"
            for r, s in self.peers.items()
            if not s.joined
        ]

    def observe(
        self, rank: int, *, ok: bool, error: str, now: float, boot: str | None = None
    ) -> None:
        """One poll's answer; a rank that had answered and is silent for LOST_AFTER_S, or
        that answers as a new process, is lost."""
        state = self.peers[rank]
        if ok and boot is not None and state.boot is not None and boot != state.boot:
            ok, error = False, "restarted"
            state.last_seen = now - LOST_AFTER_S
        if ok and boot is not None:
            state.boot = boot
        if ok:
            if not state.joined:
                log.info("rank joined", rank=rank, host=self.group.hosts[rank])
            state.joined, state.last_seen, state.error = True, now, ""
            return
        state.error = error
        if state.joined and state.last_seen is not None and now - state.last_seen >= LOST_AFTER_S:
            if self.lost is None:
                self.lost = (
                    f"rank {rank} ({self.group.hosts[rank]}) lost: no healthy answer for "
                    f"{now - state.last_seen:.0f} s ({error}); the group must restart"
                )
                log.error("rank lost", rank=rank, host=self.group.hosts[rank], error=error)
                reason = "GroupRankLost" if self.group.is_head else "GroupHeadLost"
                write_termination_message(f"{reason}: {self.lost}")
            state.joined = False

    async def _poll(self, session: aiohttp.ClientSession, rank: int) -> None:
        ok, error, boot = False, "", None
        try:
            async with session.get(self.group.health_url(rank)) as response:
                body = await response.json(content_type=None)
                status = body.get("status") if isinstance(body, dict) else None
                boot = body.get("boot") if isinstance(body, dict) else None
                if self.group.is_head:
                    ok = response.status == 200 and status == "joined"
                else:
                    # A head that is loading is fine; one that failed or lost a rank is not.
                    ok = response.status == 200 or status == "loading"
                error = f"HTTP {response.status} {status}"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.observe(rank, ok=ok, error=error, now=time.monotonic(), boot=boot)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every rank each `POLL_INTERVAL_S` until ``stop`` is set."""
        timeout = aiohttp.ClientTimeout(total=POLL_INTERVAL_S * 2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                await asyncio.gather(*(self._poll(session, r) for r in self.peers))
                try:
                    async with asyncio.timeout(POLL_INTERVAL_S):
                        await stop.wait()
                except TimeoutError:
                    pass

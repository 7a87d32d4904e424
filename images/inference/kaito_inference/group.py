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

Health across the group, which vLLM does not report. vLLM's group cannot take in a
restarted process: once any rank restarts, every rank must start over. So each process
has a boot id, every rank serves ``/health`` on the HTTP port, and the ranks poll each
other once a second:

- A worker **binds** to one head process: it waits (``waiting``) until rank 0 answers
  ``loading``, i.e. a head that is starting and waits for its ranks, and only then
  starts vLLM's workers (``joining``, then ``joined``), naming that head's boot id in
  every answer. It never joins a head that serves or is failing: that head still counts
  a previous worker in its group and is about to restart.
- Rank 0 counts a worker once it answers bound to rank 0's own boot id, and ignores
  workers bound to a previous head (they restart themselves, below). Its ``/health``
  says how many ranks have joined while it loads.
- A peer bound to this process is **lost** when it answers as another process (a new
  boot id: it restarted), or gives no healthy answer for `LOST_AFTER_S` (the pod or its
  node is gone, or it failed). The process that lost its peer writes why
  (``GroupRankLost`` on rank 0, ``GroupHeadLost`` on a worker) and exits 1, whether
  loading or serving, so kubelet restarts it at once; a head still loading must not
  wait out its startup probe.
- A worker whose own vLLM workers die writes ``GroupWorkersExited`` (which, with what
  exit code) and exits 1; rank 0 then loses it as above.

Each failure thus restarts each rank at most once more and the group converges, as long
as a healthy peer answers within `LOST_AFTER_S`.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import structlog

from .config import ConfigError

log = structlog.get_logger(__name__)

POLL_INTERVAL_S = 1.0
POLL_TIMEOUT_S = 5.0
"""One poll's limit: a peer's event loop on a loaded node can be slow to answer."""
LOST_AFTER_S = 20.0
"""A bound peer with no healthy answer for this long is lost. A restart is caught at
once by its new boot id; this catches a peer that is gone or hung, and must outlast the
pauses of a node busy compiling the model on shared CPUs (5 s did not, on 2 cores)."""

WORKERS_EXITED = "GroupWorkersExited"
"""The reason a worker rank gives when its vLLM worker processes exit on their own."""

TERMINATION_LOG_ENV = "KAITO_TERMINATION_LOG"
"""Where the reason a rank gives up is written (default: kubelet's termination log)."""

_ORDINAL = re.compile(r"-(\d+)$")

BOOT_ID = uuid.uuid4().hex[:12]
"""This process's id in ``/health``: peers tell a restarted rank from the one they knew."""

# What a worker's /health says (rank 0 says loading / ok / failed / unhealthy).
WAITING = "waiting"
"""Not bound yet: waiting for rank 0 to answer ``loading``."""
JOINING = "joining"
JOINED = "joined"


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


@dataclass(frozen=True, kw_only=True)
class Answer:
    """One ``/health`` answer of a peer."""

    code: int
    status: str | None
    boot: str | None
    head: str | None = None
    """A worker's: the boot id of the rank 0 process it is bound to (None: not bound)."""

    def describe(self) -> str:
        return f"HTTP {self.code} {self.status}"


@dataclass(kw_only=True)
class RankState:
    boot: str | None = None
    """The bound peer process's boot id; None until one is bound."""
    joined: bool = False
    last_seen: float | None = None
    error: str = "not answered yet"


@dataclass(kw_only=True)
class GroupWatch:
    """Polls the other ranks' ``/health``: whom this process is bound to, how many ranks
    have joined, and whether a bound peer is lost (module docstring)."""

    group: Group
    on_lost: Callable[[], None] | None = None
    """Called once, when a bound peer is lost (after the termination message is written)."""
    on_bound: Callable[[], None] | None = None
    """Called once a worker is bound to a rank 0 process: it may start vLLM's workers."""
    peers: dict[int, RankState] = field(default_factory=dict)
    lost: str | None = None

    def __post_init__(self) -> None:
        others = range(1, self.group.size) if self.group.is_head else (0,)
        self.peers = {r: RankState() for r in others}

    @property
    def joined(self) -> int:
        """Ranks joined, this one included."""
        return 1 + sum(1 for s in self.peers.values() if s.joined)

    @property
    def head_boot(self) -> str | None:
        """A worker's: the rank 0 process it is bound to, once it is."""
        return None if self.group.is_head else self.peers[0].boot

    def summary(self) -> str:
        return f"{self.joined}/{self.group.size} ranks joined"

    def waiting_for(self) -> list[str]:
        return [
            f"rank {r} ({self.group.hosts[r]}): {s.error}"
            for r, s in self.peers.items()
            if not s.joined
        ]

    def observe(self, rank: int, answer: Answer | None, *, error: str, now: float) -> None:
        """One poll of ``rank``: its answer, or None with the ``error`` of no answer."""
        state = self.peers[rank]
        if answer is not None:
            error = answer.describe()
        if state.boot is None:
            if answer is None or not self._binds(answer):
                state.error = self._unbound_error(answer, error)
                return
            state.boot = answer.boot
            log.info("rank bound", rank=rank, host=self.group.hosts[rank], boot=answer.boot)
            if self.on_bound is not None:
                self.on_bound()
        if answer is not None and (answer.boot != state.boot or not self._binds(answer)):
            self._lose(rank, f"it restarted (boot {state.boot} -> {answer.boot}, {error})")
            return
        if answer is not None and self._healthy(answer):
            joined = not self.group.is_head or (answer.code == 200 and answer.status == JOINED)
            if joined and not state.joined:
                log.info("rank joined", rank=rank, host=self.group.hosts[rank])
            state.joined, state.last_seen = joined, now
            state.error = "" if joined else error
            return
        state.error = error
        last = state.last_seen if state.last_seen is not None else now
        state.last_seen = last
        if now - last >= LOST_AFTER_S:
            self._lose(rank, f"no healthy answer for {now - last:.0f} s ({error})")

    def _binds(self, answer: Answer) -> bool:
        """Whether this answer comes from a peer this process can be in a group with."""
        if self.group.is_head:
            return answer.head == BOOT_ID
        return answer.boot is not None and (
            answer.boot == self.peers[0].boot or answer.status == "loading"
        )

    def _healthy(self, answer: Answer) -> bool:
        if self.group.is_head:
            return answer.status in (JOINING, JOINED)
        # A head that is loading or serving is fine; one that failed or lost a rank is not.
        return answer.code == 200 or answer.status == "loading"

    def _unbound_error(self, answer: Answer | None, error: str) -> str:
        if answer is None:
            return error
        if self.group.is_head:
            if answer.head:
                return f"{error}, bound to a previous rank 0 (boot {answer.head}): it restarts"
            return f"{error}, not bound yet"
        return f"{error}: waiting for rank 0 to restart and load"

    def _lose(self, rank: int, why: str) -> None:
        state = self.peers[rank]
        state.joined = False
        if self.lost is not None:
            return
        self.lost = f"rank {rank} ({self.group.hosts[rank]}) lost: {why}; the group must restart"
        log.error("rank lost", rank=rank, host=self.group.hosts[rank], why=why)
        reason = "GroupRankLost" if self.group.is_head else "GroupHeadLost"
        write_termination_message(f"{reason}: {self.lost}")
        if self.on_lost is not None:
            self.on_lost()

    async def _poll(self, session: aiohttp.ClientSession, rank: int) -> None:
        answer, error = None, ""
        try:
            async with session.get(self.group.health_url(rank)) as response:
                body = await response.json(content_type=None)
                if not isinstance(body, dict):
                    raise ValueError(f"/health answered {type(body).__name__}, not an object")
                answer = Answer(
                    code=response.status,
                    status=_text(body.get("status")),
                    boot=_text(body.get("boot")),
                    head=_text(body.get("head")),
                )
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.observe(rank, answer, error=error, now=time.monotonic())

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every rank each `POLL_INTERVAL_S` until ``stop`` is set or a peer is lost."""
        timeout = aiohttp.ClientTimeout(total=POLL_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set() and self.lost is None:
                await asyncio.gather(*(self._poll(session, r) for r in self.peers))
                try:
                    async with asyncio.timeout(POLL_INTERVAL_S):
                        await stop.wait()
                except TimeoutError:
                    pass


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None

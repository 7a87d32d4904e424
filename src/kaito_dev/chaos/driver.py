"""Runs a chaos plan against a `ChaosCluster` and judges it.

Each cycle (`schedule.Cycle`): inject the cycle's ARM fault storm for its agent pools
(the Machine names are deterministic, so the pools are known before the create), take
the webhook down if planned (the create is refused while it is, then retried), create
the Workspace, kill and restart the planned component at the planned moment, wait
until the Workspace is ready (``WorkspaceReady=True``: Machines Ready, Nodes labelled,
the node agent serving the inference pods), delete it, and wait until nothing of it is
left anywhere (`Observer.leftovers`). Both waits have the profile's bound.

A sampler reads the cluster every `SAMPLE_INTERVAL` seconds the whole time and records
duplicates, conditions without a reason, and stalled intervals that showed no reason
(`observe`). A run passes when every cycle converged within its bounds and all of those
lists are empty, every component still runs (a crash is a finding), and nothing at all
is left at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from kaito.api.workspace import WORKSPACES_V1ALPHA1
from kaito.controllers.workspace.nodes.machines import machine_name
from kaito.runtime.client import Client
from kaito.runtime.errors import AlreadyExists, NotFound
from kaito.runtime.meta import Obj
from kaito_dev.chaos.cluster import CONTROLLERS, ChaosCluster
from kaito_dev.chaos.observe import (
    NS,
    UNAVAILABLE,
    Observer,
    all_reasons,
    duplicates,
    is_true,
    stall_visible,
    unexplained,
)
from kaito_dev.chaos.schedule import Cycle, Kill, Profile, Storm
from kaito_dev.controlplane import ControlPlaneError

__all__ = ["STORM_REASONS", "ChaosRun", "CycleResult", "Report"]

SAMPLE_INTERVAL = 0.5
STALL_GRACE = 12.0
"""A phase not converged after this many seconds is stalled: it must show a reason."""
PRESET = "phi-3-mini-4k-instruct"
INSTANCE_TYPE = "Standard_NC6s_v3"

STORM_REASONS = {
    "throttle": "Throttled",
    "server-error": "AzureServerError",
    "failed-lro": "AllocationFailed",
    "operation-not-allowed": "OperationNotAllowed",
    "node-never-joins": "RegistrationTimeout",
}
"""The condition reason each storm kind must surface when it stalls a create."""


@dataclass
class CycleResult:
    cycle: Cycle
    create_seconds: float | None = None
    delete_seconds: float | None = None
    webhook_refusals: int = 0
    reasons: set[str] = field(default_factory=set)
    lingering: list[str] = field(default_factory=list)
    """What of the Workspace was still there last before a slow delete converged."""
    problems: list[str] = field(default_factory=list)


@dataclass
class Report:
    seed: int
    profile: Profile
    started: str
    machine: str
    cycles: list[CycleResult] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    invisible_stalls: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def problems(self) -> list[str]:
        out = [f"cycle {r.cycle.index}: {p}" for r in self.cycles for p in r.problems]
        out += [f"duplicate: {d}" for d in self.duplicates]
        out += [f"no reason: {u}" for u in self.unexplained]
        out += [f"invisible stall: {s}" for s in self.invisible_stalls]
        out += [f"leaked at the end: {x}" for x in self.leaks]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, object]:
        """The report for programs (``--out``'s ``.json`` twin)."""
        return {
            "seed": self.seed,
            "profile": self.profile.name,
            "ok": self.ok,
            "problems": self.problems,
            "wall_seconds": round(self.wall_seconds, 1),
            "cycles": [
                {
                    **asdict(r.cycle),
                    "create_seconds": r.create_seconds,
                    "delete_seconds": r.delete_seconds,
                    "webhook_refusals": r.webhook_refusals,
                    "reasons": sorted(r.reasons),
                    "lingering": r.lingering,
                }
                for r in self.cycles
            ],
        }

    def markdown(self) -> str:
        kills = Counter(r.cycle.kill.component for r in self.cycles if r.cycle.kill)
        storms = Counter(r.cycle.storm.kind for r in self.cycles if r.cycle.storm)
        webhook = sum(1 for r in self.cycles if r.cycle.webhook_down)
        creates = [r.create_seconds for r in self.cycles if r.create_seconds is not None]
        deletes = [r.delete_seconds for r in self.cycles if r.delete_seconds is not None]
        leaked = sum(1 for p in self.problems if "left" in p or "leak" in p)
        lines = [
            f"Chaos run {self.started} on {self.machine}: seed {self.seed}, profile "
            f"{self.profile.name}, bounds {self.profile.create_bound:g}s (create) / "
            f"{self.profile.delete_bound:g}s (delete), {self.wall_seconds:.0f}s wall.",
            "",
            "| cycles | workspaces (count 1/2) | fault storms by kind | kills by component "
            "| webhook outages | leaks | duplicates | stalls without a reason "
            "| worst create | worst delete | result |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {len(self.cycles)} "
            f"| {len(self.cycles)} ({sum(r.cycle.count == 1 for r in self.cycles)}/"
            f"{sum(r.cycle.count == 2 for r in self.cycles)}) "
            f"| {_counts(storms)} | {_counts(kills)} | {webhook} | {leaked} "
            f"| {len(self.duplicates)} | {len(self.invisible_stalls)} "
            f"| {max(creates, default=0):.1f}s | {max(deletes, default=0):.1f}s "
            f"| {'pass' if self.ok else 'FAIL'} |",
            "",
            "| cycle | count | storm | kill | webhook down | create | delete | reasons seen |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.cycles:
            c = r.cycle
            kill = f"{c.kill.component} @{c.kill.after:g}s {c.kill.phase}" if c.kill else ""
            storm = f"{c.storm.kind} {c.storm.seconds:g}s" if c.storm else ""
            hook = f"{c.webhook_down:g}s ({r.webhook_refusals} refused)" if c.webhook_down else ""
            lines.append(
                f"| {c.index} | {c.count} | {storm} | {kill} | {hook} "
                f"| {_secs(r.create_seconds)} | {_secs(r.delete_seconds)} "
                f"| {', '.join(sorted(r.reasons))} |"
            )
        slow = [r for r in self.cycles if r.lingering]
        if slow:
            lines += ["", "Slow deletes (what was left last before they converged):"]
            lines += [f"- cycle {r.cycle.index}: {', '.join(r.lingering)}" for r in slow]
        if self.problems:
            lines += ["", "Problems:", *(f"- {p}" for p in self.problems)]
        return "\n".join(lines) + "\n"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def machine_description() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"


@dataclass
class _Phase:
    cycle: Cycle
    phase: str
    started: float
    """When the phase began, or, later, when the last killed component was restarted: a
    stall is timed from when every component runs again (while one is dead, the stall
    is the outage, which the report lists as a kill)."""
    converged: bool = False
    invisible_since: float | None = None
    down: bool = False
    """A killed component is not back yet (a controller: until its Deployment is Ready
    and a live replica leads, which takes up to the Lease's 15 s): no stall is judged."""


class ChaosRun:
    """One run of ``cycles`` on ``cluster``; `run` returns the `Report`."""

    def __init__(
        self,
        cluster: ChaosCluster,
        client: Client,
        *,
        seed: int,
        profile: Profile,
        say: Callable[[str], None],
    ) -> None:
        self.cluster, self.client, self.profile, self.say = cluster, client, profile, say
        self.observer = Observer(client, cluster)
        self.report = Report(
            seed=seed,
            profile=profile,
            started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine_description(),
        )
        self._t0 = time.monotonic()
        self._phase: _Phase | None = None
        self._seen: set[str] = set()

    def _now(self) -> float:
        return time.monotonic() - self._t0

    async def run(self, cycles: list[Cycle]) -> Report:
        sampler = asyncio.create_task(self._sample_forever(), name="chaos sampler")
        try:
            for cycle in cycles:
                self.say(f"{cycle.describe()}")
                result = await self._cycle(cycle)
                self.report.cycles.append(result)
                self.say(
                    f"cycle {cycle.index} done: create {_secs(result.create_seconds)}, "
                    f"delete {_secs(result.delete_seconds)}"
                    + (f", PROBLEMS: {result.problems}" if result.problems else "")
                )
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        left = await self._until_readable(self.observer.anything_left, timeout=60)
        self.report.leaks = left if left is not None else ["(the cluster could not be read)"]
        self.report.wall_seconds = self._now()
        return self.report

    # -- one cycle ------------------------------------------------------------------------

    async def _cycle(self, cycle: Cycle) -> CycleResult:
        result = CycleResult(cycle)
        names = [machine_name(NS, cycle.workspace, i) for i in range(cycle.count)]
        storm_task = None
        if cycle.storm is not None:
            storm_task = asyncio.create_task(self._storm(cycle.storm, names, result))

        self._phase = _Phase(cycle, "create", time.monotonic(), down=bool(cycle.webhook_down))
        if cycle.webhook_down:
            await self._webhook_outage(cycle, result)
        t0 = time.monotonic()
        self._phase = _Phase(cycle, "create", t0)
        kill_task = self._kill_later(cycle.kill, "create", result)
        await self._create(cycle, result)
        ws = await self._wait(lambda: self._ready(cycle.workspace), self.profile.create_bound, t0)
        self._phase.converged = True
        if ws is None:
            result.problems.append(
                f"not ready within {self.profile.create_bound:g}s; last conditions: "
                f"{await self._conditions(cycle.workspace)}"
            )
        else:
            result.create_seconds = round(time.monotonic() - t0, 1)
        for sample in self.observer.samples:
            if sample.t >= t0 - self._t0:
                result.reasons |= all_reasons(sample, cycle.workspace)
        if kill_task is not None:
            await kill_task
        if storm_task is not None:
            await storm_task
        self._check_storm(cycle, result)

        t1 = time.monotonic()
        self._phase = _Phase(cycle, "delete", t1)
        kill_task = self._kill_later(cycle.kill, "delete", result)
        await self._retry(lambda: self._delete(cycle.workspace), bound=30)

        async def gone() -> bool | None:
            left = await self.observer.leftovers(cycle.workspace, names)
            if left and time.monotonic() - t1 > STALL_GRACE / 2:
                result.lingering = left
            return None if left is None else not left

        done = await self._wait(gone, self.profile.delete_bound, t1)
        self._phase.converged = True
        if done is None:
            left = await self.observer.leftovers(cycle.workspace, names)
            result.problems.append(
                f"not deleted within {self.profile.delete_bound:g}s; left: {left}"
            )
        else:
            result.delete_seconds = round(time.monotonic() - t1, 1)
        if kill_task is not None:
            await kill_task
        await self._check_alive(result)
        return result

    async def _storm(self, storm: Storm, pools: list[str], result: CycleResult) -> None:
        faults = [
            {"kind": storm.kind, "pool": pool, "times": None, "retry_after": 1} for pool in pools
        ]

        async def inject() -> None:
            for fault in faults:
                await asyncio.to_thread(self.cluster.inject, fault)

        await self._retry(inject, bound=30)
        await asyncio.sleep(storm.seconds)
        await self._retry(lambda: asyncio.to_thread(self.cluster.clear_faults), bound=60)

    def _check_storm(self, cycle: Cycle, result: CycleResult) -> None:
        """A storm that held a create up past the grace must have shown its own reason."""
        storm = cycle.storm
        if storm is None or result.create_seconds is None:
            return
        if result.create_seconds < STALL_GRACE:
            return
        # A kill during the storm excuses it: a dead emulator forgets its faults, a dead
        # provisioner makes no ARM call, a dead apiserver or etcd takes no status write.
        kill = cycle.kill
        overlapped = kill is not None and kill.phase == "create" and kill.after < storm.seconds
        want = STORM_REASONS[storm.kind]
        if want not in result.reasons and not overlapped:
            self.report.invisible_stalls.append(
                f"cycle {cycle.index}: the {storm.kind} storm held the create "
                f"{result.create_seconds:.1f}s, but no condition said {want} "
                f"(reasons seen: {sorted(result.reasons)})"
            )

    async def _webhook_outage(self, cycle: Cycle, result: CycleResult) -> None:
        """The webhook's server gone: every create is refused until it is back."""
        self.say(
            f"  webhook down: the workspace controller scaled to 0 for {cycle.webhook_down:g}s"
        )
        try:
            await asyncio.to_thread(self.cluster.webhook_down)
        except ControlPlaneError as e:
            result.problems.append(f"webhook outage: {e}")
        until = time.monotonic() + cycle.webhook_down
        while time.monotonic() < until:
            try:
                await self.client.create(WORKSPACES_V1ALPHA1, self._workspace(cycle))
            except UNAVAILABLE as e:
                if "webhook" not in str(e):
                    result.problems.append(f"create refused for another reason: {e}")
                result.webhook_refusals += 1
            else:
                result.problems.append("a create was admitted while the webhook was down")
                break
            await asyncio.sleep(0.3)
        self.say("  webhook back: the workspace controller scaled to 2")
        try:
            await asyncio.to_thread(self.cluster.webhook_up)
        except ControlPlaneError as e:
            result.problems.append(f"webhook outage: {e}")
        if self._phase is not None:
            self._phase.started = time.monotonic()

    def _kill_later(
        self, kill: Kill | None, phase: str, result: CycleResult
    ) -> asyncio.Task[None] | None:
        if kill is None or kill.phase != phase:
            return None

        async def strike() -> None:
            await asyncio.sleep(kill.after)
            self.say(f"  SIGKILL {kill.component} ({kill.after:g}s into {phase})")
            if self._phase is not None and self._phase.phase == phase:
                self._phase.down = True
            try:
                await asyncio.to_thread(self.cluster.kill, kill.component)
                await asyncio.sleep(kill.down)
                if kill.component in CONTROLLERS:
                    self.say(f"  waiting for {kill.component}: its pods Ready, a leader")
                else:
                    self.say(f"  restarting {kill.component} after {kill.down:g}s down")
                await asyncio.to_thread(self.cluster.restart, kill.component)
            except ControlPlaneError as e:
                result.problems.append(f"kill of {kill.component}: {e}")
            if self._phase is not None and self._phase.phase == phase:
                self._phase.started = time.monotonic()
                self._phase.down = False

        return asyncio.create_task(strike(), name=f"kill {kill.component}")

    async def _check_alive(self, result: CycleResult) -> None:
        for name, alive in (await asyncio.to_thread(self.cluster.alive)).items():
            if not alive:
                log = await asyncio.to_thread(self.cluster.log, name)
                tail = log.read_text(errors="replace")[-1500:]
                result.problems.append(f"{name} exited on its own:\n{tail}")
                await asyncio.to_thread(self.cluster.restart, name)

    # -- the Workspace --------------------------------------------------------------------

    @staticmethod
    def _workspace(cycle: Cycle) -> Obj:
        return {
            "apiVersion": WORKSPACES_V1ALPHA1.api_version,
            "kind": "Workspace",
            "metadata": {"name": cycle.workspace, "namespace": NS},
            "resource": {
                "instanceType": INSTANCE_TYPE,
                "count": cycle.count,
                "labelSelector": {"matchLabels": {"apps": cycle.workspace}},
            },
            "inference": {"preset": {"name": PRESET}},
        }

    async def _create(self, cycle: Cycle, result: CycleResult) -> None:
        async def create() -> bool:
            try:
                await self.client.create(WORKSPACES_V1ALPHA1, self._workspace(cycle))
            except AlreadyExists:
                pass
            except UNAVAILABLE as e:
                if "webhook" in str(e):
                    result.webhook_refusals += 1
                raise
            return True

        if not await self._retry(create, bound=self.profile.create_bound):
            result.problems.append("the create was never admitted")

    async def _ready(self, name: str) -> Obj | None:
        try:
            ws = await self.client.get(WORKSPACES_V1ALPHA1, name, NS)
        except NotFound:
            return None
        return ws if is_true(ws, "WorkspaceReady") else None

    async def _delete(self, name: str) -> bool:
        with contextlib.suppress(NotFound):
            await self.client.delete(WORKSPACES_V1ALPHA1, name, NS)
        return True

    async def _conditions(self, name: str) -> object:
        try:
            ws = await self.client.get(WORKSPACES_V1ALPHA1, name, NS)
        except (NotFound, *UNAVAILABLE):
            return None
        return [
            (c["type"], c["status"], c.get("reason"))
            for c in ws.get("status", {}).get("conditions") or ()
        ]

    # -- waiting and sampling -------------------------------------------------------------

    async def _retry(self, call: Callable[[], object], *, bound: float) -> bool:
        """``await call()`` until it returns without an apiserver/emulator error."""
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            try:
                await call()  # type: ignore[misc]
                return True
            except UNAVAILABLE:
                await asyncio.sleep(0.3)
        return False

    async def _wait(self, check: Callable[[], object], bound: float, t0: float) -> object:
        """``check()``'s first truthy value within ``bound`` seconds of ``t0``; None after."""
        while time.monotonic() - t0 < bound:
            try:
                value = await check()  # type: ignore[misc]
            except UNAVAILABLE:
                value = None
            if value:
                return value
            await asyncio.sleep(0.3)
        return None

    async def _until_readable(
        self, read: Callable[[], object], *, timeout: float
    ) -> list[str] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await read()  # type: ignore[misc]
            if value is not None:
                return list(value)
            await asyncio.sleep(0.5)
        return None

    async def _sample_forever(self) -> None:
        while True:
            await self._sample_once()
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def _sample_once(self) -> None:
        phase = self._phase
        sample = await self.observer.sample(self._now())
        if phase is None:
            return
        cycle = phase.cycle
        live = {cycle.workspace: cycle.count} if phase.phase == "create" else {}
        for d in duplicates(sample, live):
            self._once(self.report.duplicates, f"cycle {cycle.index} at {sample.t:.1f}s: {d}")
        for u in unexplained(sample):
            self._once(self.report.unexplained, f"cycle {cycle.index}: {u}")
        elapsed = time.monotonic() - phase.started
        if phase.converged or phase.down or elapsed < STALL_GRACE or sample.workspaces is None:
            return
        visible, _ = stall_visible(sample, cycle.workspace, phase.phase)
        if visible:
            phase.invisible_since = None
        elif phase.invisible_since is None:
            phase.invisible_since = elapsed
            self._once(
                self.report.invisible_stalls,
                f"cycle {cycle.index} {phase.phase}: stalled {elapsed:.1f}s with no "
                f"condition reason on {cycle.workspace} or its Machines",
            )

    def _once(self, into: list[str], item: str) -> None:
        key = item.split(" at ")[0] + item.split(": ", 1)[-1]
        if key not in self._seen:
            self._seen.add(key)
            into.append(item)

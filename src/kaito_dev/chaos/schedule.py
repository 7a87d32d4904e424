"""The chaos schedule: what each cycle does, a pure function of the seed.

A cycle creates one Workspace (``resource.count`` 1 or 2), waits until it is ready,
deletes it and waits until nothing of it is left. Into that it mixes, as the seed
decides:

- a **kill**: SIGKILL one component (`COMPONENTS`) ``after`` seconds into the create or
  the delete phase, leave it down ``down`` seconds, start it again (a controller: its
  leader pod's container, which the kubelet restarts; `kaito_dev.chaos.cluster`);
- an ARM **fault storm** (`STORMS`): the emulator answers every matching request of the
  cycle's agent pools with the fault for ``seconds``, then the fault is cleared;
- the **webhook unavailable**: the workspace controller (which serves the validating
  webhook, ``failurePolicy: Fail``) is scaled to zero before the create, the create is
  tried and refused for ``seconds``, the controller scaled back, the create retried.

Every kill target and storm kind is dealt round-robin from a seeded shuffle, so a run
of at least ``len(COMPONENTS)`` cycles kills each component and one of ``len(STORMS)``
cycles storms each kind; the rest (phase, timings, count) is drawn from the same
``random.Random(seed)``. `render` prints the plan, so a failing seed can be read and
replayed (``kaito dev chaos --seed S``); timings inside the stack still vary from run
to run, the plan does not.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass

__all__ = ["COMPONENTS", "PROFILES", "STORMS", "Cycle", "Kill", "Profile", "Storm", "plan"]

COMPONENTS = ("workspace-controller", "gpu-provisioner", "kube-apiserver", "etcd", "aks-emulator")
"""What a kill may hit (the controllers: their leader pod's container)."""

STORMS = ("throttle", "server-error", "failed-lro", "operation-not-allowed", "node-never-joins")
"""The ARM fault kinds a storm may inject (`kaito_dev.aks.faults.FaultKind` values)."""


@dataclass(frozen=True)
class Kill:
    component: str
    phase: str
    """``create`` or ``delete``: which phase of the cycle it strikes in."""
    after: float
    """Seconds after the phase began."""
    down: float
    """Seconds the component stays dead before it is started again."""


@dataclass(frozen=True)
class Storm:
    kind: str
    seconds: float
    """How long the fault answers every matching request (from just before the create)."""


@dataclass(frozen=True)
class Cycle:
    index: int
    workspace: str
    count: int
    kill: Kill | None
    storm: Storm | None
    webhook_down: float
    """Seconds creates are refused because the webhook's server is dead; 0: not this cycle."""

    def describe(self) -> str:
        parts = [f"cycle {self.index:>2}: {self.workspace} count={self.count}"]
        if self.storm:
            parts.append(f"storm {self.storm.kind} {self.storm.seconds:g}s")
        if self.kill:
            k = self.kill
            parts.append(f"kill {k.component} {k.after:g}s into {k.phase}, down {k.down:g}s")
        if self.webhook_down:
            parts.append(f"webhook down {self.webhook_down:g}s")
        return ", ".join(parts)


@dataclass(frozen=True)
class Profile:
    name: str
    cycles: int
    """Default number of cycles."""
    kill_rate: float
    storm_rate: float
    webhook_rate: float
    create_bound: float
    """Seconds a create may take to converge (Workspace ready), faults and kills included."""
    delete_bound: float
    """Seconds a delete may take to converge (nothing of the Workspace left)."""


PROFILES = {
    # In `make test`: every cycle kills one component and storms one fault kind, so five
    # cycles cover every kill target and every storm kind once.
    "short": Profile("short", 5, 1.0, 1.0, 0.2, create_bound=120.0, delete_bound=90.0),
    "long": Profile("long", 25, 0.8, 0.7, 0.2, create_bound=180.0, delete_bound=120.0),
}


def plan(seed: int, cycles: int, profile: Profile) -> list[Cycle]:
    """The cycles of a run: the same ``(seed, cycles, profile)`` always gives the same plan."""
    rng = random.Random(seed)
    kills = _deck(rng, COMPONENTS)
    storms = _deck(rng, STORMS)
    drawn: list[tuple[int, Kill | None, Storm | None]] = []
    for _ in range(cycles):
        kill = None
        if rng.random() < profile.kill_rate:
            component = next(kills)
            phase = rng.choice(("create", "delete"))
            after = round(rng.uniform(0.2, 3.0) if phase == "create" else rng.uniform(0.0, 1.5), 1)
            kill = Kill(component, phase, after, round(rng.uniform(0.5, 3.0), 1))
        storm = None
        if rng.random() < profile.storm_rate:
            storm = Storm(next(storms), round(rng.uniform(5.0, 9.0), 1))
        drawn.append((rng.choice((1, 2)), kill, storm))
    # The webhook outage takes the workspace controller away on its own: never in a
    # cycle that kills the controller again.
    eligible = [
        i for i, (_, kill, _) in enumerate(drawn)
        if kill is None or kill.component != "workspace-controller"
    ]  # fmt: skip
    wanted = min(len(eligible), max(1, round(cycles * profile.webhook_rate)))
    outages = {i: round(rng.uniform(1.0, 3.0), 1) for i in sorted(rng.sample(eligible, wanted))}
    return [
        Cycle(i, f"chaos-{seed % 1000}-{i}", count, kill, storm, outages.get(i, 0.0))
        for i, (count, kill, storm) in enumerate(drawn)
    ]


def render(seed: int, profile: Profile, cycles: list[Cycle]) -> str:
    """The plan as text, one line per cycle (printed at the start of a run)."""
    head = f"chaos plan: seed={seed} profile={profile.name} cycles={len(cycles)}"
    return "\n".join([head, *(c.describe() for c in cycles)])


def as_json(cycles: list[Cycle]) -> list[dict[str, object]]:
    return [asdict(c) for c in cycles]


def _deck(rng: random.Random, items: tuple[str, ...]) -> Iterator[str]:
    """Endless round-robin over ``items``, reshuffled each round."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order

"""When each cold-start phase ended: ``status.coldStart`` and an Event per phase.

Users' first question about a model server is where the minutes from ``kubectl apply``
to an answer went. The controller records, once per revision, the time each phase
ended, from what it already watches:

============== ===================================================================
MachineCreated the Workspace's Machines/NodeClaims' ``creationTimestamp`` (the last)
NodeReady      the worker nodes' ``Ready`` ``lastTransitionTime`` (the last)
PodScheduled   the pods' ``PodScheduled=True`` time
ImagePulled    the first container of the pod that started (init containers included):
               kubelet starts one only once its image is on the node
WeightsFetched the ``fetch-weights`` init container's ``finishedAt``, exit code 0
ServerLoaded   the inference pods' ``Ready=True`` time (the startup probe passed: the
               weights are in GPU memory)
Ready          ``InferenceReady`` (tuning: ``WorkspaceReady``) turned True
============== ===================================================================

A pod phase ends when as many pods of the current revision as the Workspace runs
(``count``, a tuning Job's one) have reached it; with more (a replaced pod, a Job's
retry) the earliest ones count. The record is of one revision, the first 12 of
``workspace.kaito.io/hash``: it begins at the Workspace's creation; a changed revision
starts a new one when the controller first sees it, and since a rollout reuses the
nodes, node phases are recorded only when they end after the record's beginning (so
are nodes that were Ready before the Workspace existed, in byo mode: not at all).

A phase is recorded the first time it is seen and never rewritten, so a steady-state
reconcile writes nothing; ``seconds`` is from the record's beginning. `fold` returns the
new record and the steps it added; the reconcile writes one and makes an Event of each
(reason ``ColdStart``, message `step_message`: ``WeightsFetched 3m20s after the Workspace
was created (2m0s after ImagePulled)``).

Pure functions over raw objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kaito.api.workspace import ANNOTATION_REVISION, ColdStartPhase
from kaito.controllers.workspace.status.weights import FETCH_CONTAINER
from kaito.runtime.meta import Obj
from kaito.runtime.timestamps import format_rfc3339, parse_rfc3339

__all__ = [
    "EVENT_REASON",
    "ColdStartView",
    "fold",
    "format_seconds",
    "observed_phases",
    "step_message",
]

Phase = ColdStartPhase
ORDER: tuple[Phase, ...] = tuple(Phase)
NODE_PHASES = frozenset({Phase.MACHINE_CREATED, Phase.NODE_READY})
REVISION_CHARS = 12
EVENT_REASON = "ColdStart"
"""Of each phase's Event (the phases' names are taken: ``MachineCreated`` is the
Machine's own creation Event)."""


@dataclass(frozen=True)
class ColdStartView:
    """What the controller sees of one Workspace's cold start in one reconcile."""

    revision: str
    """The full revision hash (the pods' ``workspace.kaito.io/hash`` annotation)."""
    machines: Sequence[Obj] = ()
    """The Workspace's Machines or NodeClaims."""
    nodes: Sequence[Obj] = ()
    """Its worker nodes, once ``ResourceReady`` lists them."""
    pods: Sequence[Obj] = ()
    """Its workload's pods, any revision."""
    wanted: int = 1
    """Pods that must reach a phase for it to end."""
    serves: bool = True
    """An inference Workspace (``ServerLoaded`` applies); False for tuning."""
    ready_at: str | None = None
    """When ``InferenceReady`` (tuning: ``WorkspaceReady``) last turned True, if it is."""


def _condition_time(obj: Obj, type_: str) -> float | None:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if cond.get("type") == type_ and cond.get("status") == "True":
            return parse_rfc3339(cond.get("lastTransitionTime"))
    return None


def _started_times(pod: Obj) -> Iterable[float]:
    status = pod.get("status") or {}
    for cs in (
        *(status.get("initContainerStatuses") or ()),
        *(status.get("containerStatuses") or ()),
    ):
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            for key in ("running", "terminated"):
                t = parse_rfc3339((state.get(key) or {}).get("startedAt"))
                if t is not None:
                    yield t


def _fetched_time(pod: Obj) -> float | None:
    for cs in (pod.get("status") or {}).get("initContainerStatuses") or ():
        if cs.get("name") != FETCH_CONTAINER:
            continue
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            done = state.get("terminated") or {}
            if done and done.get("exitCode") == 0:
                return parse_rfc3339(done.get("finishedAt"))
    return None


def _pod_phases(pod: Obj, *, serves: bool) -> dict[Phase, float]:
    out: dict[Phase, float] = {}
    scheduled = _condition_time(pod, "PodScheduled")
    if scheduled is not None:
        out[Phase.POD_SCHEDULED] = scheduled
    started = min(_started_times(pod), default=None)
    if started is not None:
        out[Phase.IMAGE_PULLED] = started
    fetched = _fetched_time(pod)
    if fetched is not None:
        out[Phase.WEIGHTS_FETCHED] = fetched
    if serves:
        ready = _condition_time(pod, "Ready")
        if ready is not None:
            out[Phase.SERVER_LOADED] = ready
    return out


def _last(times: Iterable[float | None]) -> float | None:
    found = [t for t in times if t is not None]
    return max(found) if found else None


def observed_phases(view: ColdStartView) -> dict[Phase, float]:
    """Epoch seconds of each phase ``view`` shows ended (unordered, unfiltered)."""
    out: dict[Phase, float] = {}
    machines = [m for m in view.machines if not m["metadata"].get("deletionTimestamp")]
    created = _last(parse_rfc3339(m["metadata"].get("creationTimestamp")) for m in machines)
    if created is not None:
        out[Phase.MACHINE_CREATED] = created
    if view.nodes:
        ready = [_condition_time(n, "Ready") for n in view.nodes]
        if all(t is not None for t in ready):
            node_ready = _last(ready)
            assert node_ready is not None
            out[Phase.NODE_READY] = node_ready
    pods = [
        p
        for p in view.pods
        if not p["metadata"].get("deletionTimestamp")
        and (p["metadata"].get("annotations") or {}).get(ANNOTATION_REVISION) == view.revision
    ]
    per_pod = [_pod_phases(p, serves=view.serves) for p in pods]
    wanted = max(view.wanted, 1)
    for phase in ORDER:
        times = sorted(t for phases in per_pod if (t := phases.get(phase)) is not None)
        if len(times) >= wanted:
            out[phase] = times[wanted - 1]
    ready_at = parse_rfc3339(view.ready_at)
    if ready_at is not None:
        out[Phase.READY] = ready_at
    return out


def format_seconds(seconds: float) -> str:
    """``95`` -> ``1m35s``; ``3725`` -> ``1h2m5s``; ``7`` -> ``7s``."""
    s = max(round(seconds), 0)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    return f"{m}m{s}s" if m else f"{s}s"


def fold(
    current: Obj | None, view: ColdStartView, *, created: str, now: str
) -> tuple[Obj, list[Obj]]:
    """(the new ``status.coldStart``, the steps it adds) for ``view``.

    ``current`` is the recorded one; ``created`` the Workspace's ``creationTimestamp``;
    ``now`` the controller's clock, the beginning of a record of a changed revision.
    """
    revision = view.revision[:REVISION_CHARS]
    if current and current.get("revision") == revision:
        record: Obj = {**current, "phases": list(current.get("phases") or ())}
    else:
        record = {"revision": revision, "startedAt": now if current else created, "phases": []}
    begin = parse_rfc3339(record["startedAt"]) or 0.0
    recorded = {p.get("phase"): p for p in record["phases"]}
    seen = observed_phases(view)
    latest = _last(parse_rfc3339(p.get("time")) for p in record["phases"])
    added: list[Obj] = []
    for phase in ORDER:
        if phase in recorded or phase not in seen:
            continue
        t = seen[phase]
        if phase in NODE_PHASES and t < begin:
            continue  # before this record began: not part of its cold start
        if phase is Phase.READY:
            t = max(t, latest or t)  # a Ready condition older than this revision's pods
        step = {
            "phase": str(phase),
            "seconds": max(int(t - begin), 0),
            "time": format_rfc3339(max(t, begin)),
        }
        recorded[phase] = step
        added.append(step)
        latest = max(latest or t, t)
    if added:
        record["phases"] = [recorded[p] for p in ORDER if p in recorded]
    return record, added


def step_message(record: Obj, step: Obj, *, created: str) -> str:
    """The Event of one recorded step: how long after the beginning (``created``: the
    Workspace's creation), and after the phase before it."""
    origin = (
        "the Workspace was created"
        if record.get("startedAt") == created
        else f"revision {record.get('revision')} was first seen"
    )
    text = f"{step['phase']} {format_seconds(step['seconds'])} after {origin}"
    phases = record.get("phases") or ()
    index = next((i for i, p in enumerate(phases) if p.get("phase") == step["phase"]), 0)
    if index > 0:
        prev = phases[index - 1]
        delta = int(step["seconds"]) - int(prev.get("seconds") or 0)
        text += f" ({format_seconds(delta)} after {prev.get('phase')})"
    return text

"""Pod status as kubelet writes it, from the agent's view of each container.

`ContainerState` is the agent's record of one container; `pod_status` turns the pod's
records into the ``status`` the agent writes through ``pods/status``: ``phase``
(kubelet's ``getPhase``), conditions ``PodScheduled``/``Initialized``/``ContainersReady``/
``Ready``, ``containerStatuses``/``initContainerStatuses``, ``podIP``/``podIPs``/``hostIP``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from kaito.runtime.conditions import ConditionStatus, StatusDraft
from kaito.runtime.meta import Obj
from kaito.runtime.timestamps import now_rfc3339

HOST_IP = "127.0.0.1"


@dataclass
class ContainerState:
    """What one container is doing; exactly one of waiting/running/terminated holds."""

    name: str
    image: str
    waiting_reason: str | None = "ContainerCreating"
    waiting_message: str | None = None
    started_at: str | None = None
    terminated: Obj | None = None
    last_terminated: Obj | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False

    def wait(self, reason: str, message: str | None = None) -> None:
        self.waiting_reason, self.waiting_message = reason, message
        self.started_at = None
        self.ready = False
        self.started = False

    def run(self) -> None:
        if self.terminated is not None:
            self.last_terminated = self.terminated
            self.terminated = None
        self.waiting_reason = self.waiting_message = None
        self.started_at = now_rfc3339()
        self.started = True
        self.ready = False

    def terminate(self, exit_code: int, message: str | None = None) -> None:
        term: Obj = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": self.started_at or now_rfc3339(),
            "finishedAt": now_rfc3339(),
        }
        if message:
            term["message"] = message
        self.terminated = term
        self.waiting_reason = self.waiting_message = None
        self.started_at = None
        self.ready = False
        self.started = False

    def back_off(self, reason: str, message: str) -> None:
        """Waiting to restart: the last termination moves to lastState."""
        if self.terminated is not None:
            self.last_terminated = self.terminated
            self.terminated = None
        self.wait(reason, message)

    @property
    def is_running(self) -> bool:
        return self.started_at is not None

    def to_status(self) -> Obj:
        if self.terminated is not None:
            state: Obj = {"terminated": self.terminated}
        elif self.started_at is not None:
            state = {"running": {"startedAt": self.started_at}}
        else:
            waiting: Obj = {"reason": self.waiting_reason or "ContainerCreating"}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        out: Obj = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
        }
        if self.started_at is not None or self.terminated is not None:
            out["containerID"] = f"nodeagent://{self.name}"
        return out


class PodConditions(StatusDraft):
    """A pod's conditions as kubelet writes them, with metav1 transition semantics.

    kubelet's style: a reason only on a condition that is not True, no empty message,
    ``lastProbeTime: null`` on each, and its four conditions first in its order; the
    agent's own (``VolumesReady``) follow.
    """

    omit_empty = True
    condition_order = ("Initialized", "Ready", "ContainersReady", "PodScheduled")
    fixed_fields: ClassVar[Obj] = {"lastProbeTime": None}

    def __init__(self) -> None:
        super().__init__(None)

    def set_bool(self, type_: str, ok: bool, reason: str = "", message: str = "") -> bool:
        """Set ``type_`` True or False; ``reason`` is written only when it is False."""
        status: ConditionStatus = "True" if ok else "False"
        return self.set(type_, status, "" if ok else reason, message)


@dataclass
class PodState:
    """The agent's records for one pod plus its address."""

    init: list[ContainerState] = field(default_factory=list)
    main: list[ContainerState] = field(default_factory=list)
    restart_policy: str = "Always"
    pod_ip: str | None = None
    start_time: str = field(default_factory=now_rfc3339)
    initialized: bool = False
    failed_init: bool = False
    conditions: PodConditions = field(default_factory=PodConditions)


def pod_phase(state: PodState) -> str:
    """kubelet's getPhase, for the states the agent produces."""
    if state.failed_init:
        return "Failed"
    if not state.initialized:
        return "Pending"
    waiting = running = stopped = succeeded = 0
    for c in state.main:
        if c.is_running:
            running += 1
        elif c.terminated is not None:
            stopped += 1
            if c.terminated["exitCode"] == 0:
                succeeded += 1
        elif c.last_terminated is not None:
            stopped += 1
        else:
            waiting += 1
    policy = state.restart_policy
    if waiting > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if stopped == len(state.main):
        if policy == "Always":
            return "Running"
        if policy == "OnFailure":
            return "Succeeded" if succeeded == stopped else "Running"
        return "Succeeded" if succeeded == stopped else "Failed"
    return "Pending"


def pod_status(state: PodState) -> Obj:
    phase = pod_phase(state)
    terminal = phase in ("Succeeded", "Failed")
    not_ready = [c.name for c in state.main if not c.ready]
    ready = not not_ready and bool(state.main)
    reason = "PodCompleted" if terminal else "ContainersNotReady"
    conditions = state.conditions
    conditions.set_bool("Initialized", state.initialized or terminal, "ContainersNotInitialized")
    conditions.set_bool("Ready", ready, reason)
    conditions.set_bool("ContainersReady", ready, reason)
    conditions.set_bool("PodScheduled", True)
    status: Obj = {
        "phase": phase,
        "hostIP": HOST_IP,
        "startTime": state.start_time,
        "conditions": [dict(c) for c in conditions.conditions],  # copies: the draft keeps its own
        "containerStatuses": [c.to_status() for c in state.main],
    }
    if state.init:
        status["initContainerStatuses"] = [c.to_status() for c in state.init]
    if state.pod_ip:
        status["podIP"] = state.pod_ip
        status["podIPs"] = [{"ip": state.pod_ip}]
    return status

"""Pod status as kubelet writes it, from the agent's view of each container.

`ContainerState` is the agent's record of one container; `pod_status` turns the pod's
records into the ``status`` the agent writes through ``pods/status``: ``phase``
(kubelet's ``getPhase``), conditions ``PodScheduled``/``Initialized``/``ContainersReady``/
``Ready``, ``containerStatuses``/``initContainerStatuses``, ``podIP``/``podIPs``/``hostIP``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    extra_conditions: list[Obj] = field(default_factory=list)
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)


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


def _condition(state: PodState, type_: str, ok: bool, reason: str | None = None) -> Obj:
    status = "True" if ok else "False"
    prev = state.transitions.get(type_)
    if prev is None or prev[0] != status:
        state.transitions[type_] = (status, now_rfc3339())
    cond: Obj = {
        "type": type_,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": state.transitions[type_][1],
    }
    if reason and not ok:
        cond["reason"] = reason
    return cond


def pod_status(state: PodState) -> Obj:
    phase = pod_phase(state)
    terminal = phase in ("Succeeded", "Failed")
    not_ready = [c.name for c in state.main if not c.ready]
    ready = not not_ready and bool(state.main)
    reason = "PodCompleted" if terminal else "ContainersNotReady"
    status: Obj = {
        "phase": phase,
        "hostIP": HOST_IP,
        "startTime": state.start_time,
        "conditions": [
            _condition(
                state, "Initialized", state.initialized or terminal, "ContainersNotInitialized"
            ),
            _condition(state, "Ready", ready, reason),
            _condition(state, "ContainersReady", ready, reason),
            _condition(state, "PodScheduled", True),
            *state.extra_conditions,
        ],
        "containerStatuses": [c.to_status() for c in state.main],
    }
    if state.init:
        status["initContainerStatuses"] = [c.to_status() for c in state.init]
    if state.pod_ip:
        status["podIP"] = state.pod_ip
        status["podIPs"] = [{"ip": state.pod_ip}]
    return status

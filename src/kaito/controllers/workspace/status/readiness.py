"""Fold a workload and its pods into ``InferenceReady`` / ``JobStarted`` / ``WorkspaceReady``.

``InferenceReady`` is True when every replica of the current revision is ready. When it
is not, the reason is found where kubelet and the scheduler put it, on the pods:

- ``Unschedulable``: the pod's ``PodScheduled=False`` (the scheduler's message says which
  nodes and why: GPUs, taints, affinity);
- a container waiting with ``ImagePullBackOff``, ``ErrImagePull``, ``CrashLoopBackOff``,
  ``CreateContainerConfigError``, ``InvalidImageName`` ... (kubelet's own reason and
  message);
- a container whose last run ended ``OOMKilled`` (or ``Error`` with its exit code and
  the tail of its log, when kubelet kept it as the termination message);
- a container that ended non-zero (a tuning Job's pod: ``restartPolicy: Never``) with
  its exit code and termination message. Our images' helpers (the adapter pusher and
  puller) write ``<Reason>: <message>``, and that reason becomes the condition's, so a
  refused push reads ``Unauthorized`` on the Workspace, not a bare ``Error`` (and a
  refused adapter pull, restarting, not a bare ``CrashLoopBackOff``).

Containers are examined in the pod spec's order (kubelet lists their statuses sorted by
name): the tuning container's own failure comes before the pusher's "nothing to push".
- a ``fetch-weights`` init container still running: ``DownloadingWeights`` with the
  bytes done, the total and the rate from its progress annotation (`weights`);
- otherwise ``InferenceStarting``/``RolloutInProgress`` with ready/total counts.

A pod of an older revision that is still running does not make the workload ready:
``updatedReplicas`` must match too.

Pure functions over raw objects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from kaito.controllers.workspace.status.weights import fetching_message
from kaito.runtime.meta import Obj

__all__ = ["Verdict", "group_summary", "inference_verdict", "job_verdicts", "pod_problem"]

Status = Literal["True", "False", "Unknown"]

WAITING_PROBLEMS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str
    message: str


def _short(text: str, limit: int = 600) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_MESSAGE_REASON = re.compile(r"^([A-Z][A-Za-z]{2,63}): \S")
"""``Unauthorized: pushing ...``: a termination message that starts with its reason."""


def _spec_order(pod: Obj, key: str, statuses: Iterable[Obj]) -> list[Obj]:
    """Container statuses in the order the pod spec lists the containers."""
    order = {c.get("name"): i for i, c in enumerate((pod.get("spec") or {}).get(key) or ())}
    return sorted(statuses, key=lambda cs: order.get(cs.get("name"), len(order)))


def _terminated_problem(name: str, cs: Obj, terminated: Obj) -> tuple[str, str] | None:
    code = terminated.get("exitCode")
    if not code:
        return None
    message = (terminated.get("message") or "").strip()
    found = _MESSAGE_REASON.match(message)
    reason = found.group(1) if found else (terminated.get("reason") or "Error")
    detail = f": {message}" if message else ""
    return reason, _short(f"pod {name}: container {cs.get('name')} exited {code}{detail}")


def pod_problem(pod: Obj) -> tuple[str, str] | None:
    """(reason, message) of what keeps ``pod`` from running, or None."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    for cond in status.get("conditions") or ():
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            reason = cond.get("reason") or "Unschedulable"
            return reason, f"pod {name}: {_short(cond.get('message') or 'not scheduled')}"
    statuses = [
        *_spec_order(pod, "initContainers", status.get("initContainerStatuses") or ()),
        *_spec_order(pod, "containers", status.get("containerStatuses") or ()),
    ]
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in WAITING_PROBLEMS:
            detail = waiting.get("message") or ""
            last = ((cs.get("lastState") or {}).get("terminated")) or {}
            if reason == "CrashLoopBackOff" and last:
                if last.get("reason") == "OOMKilled":
                    return "OOMKilled", (
                        f"pod {name}: container {cs.get('name')} was killed for running out "
                        "of memory; pick a larger instance type or lower max-model-len"
                    )
                detail = (
                    f"last exit code {last.get('exitCode')}"
                    + (f": {last['message'].strip()}" if last.get("message") else "")
                    + (f" ({detail})" if detail else "")
                )
                # An adapter puller refused by the registry restarts in a loop: its own
                # reason (Unauthorized) says more than CrashLoopBackOff.
                found = _MESSAGE_REASON.match((last.get("message") or "").strip())
                if found:
                    return found.group(1), _short(
                        f"pod {name}: container {cs.get('name')}: {reason}: {detail}"
                    )
            return reason, _short(f"pod {name}: container {cs.get('name')}: {reason}: {detail}")
        terminated = (cs.get("state") or {}).get("terminated") or {}
        if terminated.get("reason") == "OOMKilled":
            return "OOMKilled", f"pod {name}: container {cs.get('name')} was OOMKilled"
        problem = _terminated_problem(name, cs, terminated)
        if problem is not None:
            return problem
    if status.get("phase") == "Failed":
        return "PodFailed", f"pod {name} failed: {status.get('message') or status.get('reason')}"
    return None


def _downloading(pods: Iterable[Obj]) -> Verdict | None:
    """``DownloadingWeights`` from the pods whose weights fetch runs (all of them)."""
    messages = [m for m in (fetching_message(p) for p in pods) if m is not None]
    if not messages:
        return None
    return Verdict("False", "DownloadingWeights", _short("; ".join(messages)))


def _ready_counts(workload: Obj) -> tuple[int, int, int, bool]:
    """(wanted, ready, updated, observed) of a Deployment or StatefulSet."""
    spec = workload.get("spec") or {}
    status = workload.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    observed = int(status.get("observedGeneration") or 0) >= int(
        workload.get("metadata", {}).get("generation") or 0
    )
    return wanted, ready, updated, observed


def _restarted_problem(pod: Obj) -> tuple[str, str] | None:
    """A container that is running again after stopping with ``<Reason>: <message>`` (a
    group rank that lost its peers): that reason, until the pod is ready again."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or ():
        last = (cs.get("lastState") or {}).get("terminated") or {}
        message = (last.get("message") or "").strip()
        found = _MESSAGE_REASON.match(message)
        if cs.get("ready") or not found or not last.get("exitCode"):
            continue
        name = pod["metadata"]["name"]
        return found.group(1), _short(
            f"pod {name}: container {cs.get('name')} restarted (exit code "
            f"{last.get('exitCode')}) after: {message}"
        )
    return None


def inference_verdict(
    workload: Obj | None, pods: Iterable[Obj], *, kind: str, group: str | None = None
) -> Verdict:
    """``group``: how a StatefulSet splits the model (`group_summary`), said in every
    message about it."""
    if workload is None:
        return Verdict("False", "WorkloadNotCreated", f"the {kind} has not been created yet")
    current_pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    verdict = _inference_verdict(workload, current_pods, kind=kind)
    if group is None:
        return verdict
    message = verdict.message
    if verdict.reason == "InferenceStarting":
        message = _ranks_joined(workload, current_pods, kind=kind)
    return Verdict(verdict.status, verdict.reason, f"{group}; {message}")


def _ranks_joined(workload: Obj, pods: list[Obj], *, kind: str) -> str:
    """A starting group's progress, as pod 0's ``/health`` counts it: pod 0 once its
    server runs, and each worker pod that is Ready (its readiness probe passes once it
    joined pod 0's group)."""
    name = workload["metadata"]["name"]
    wanted = _ready_counts(workload)[0]
    by_name = {p["metadata"]["name"]: p for p in pods}
    head = by_name.get(f"{name}-0")
    workers = [f"{name}-{i}" for i in range(1, wanted)]
    waiting = [w for w in workers if w not in by_name or not _pod_ready(by_name[w])]
    joined = (1 if head is not None and _running(head) else 0) + len(workers) - len(waiting)
    if head is None or not _running(head):
        state = f"pod {name}-0 is not running yet"
    elif waiting:
        state = f"pod {name}-0 waits for {', '.join(waiting)}"
    else:
        state = f"pod {name}-0 is loading the model"
    return f"{kind} {name}: {joined}/{wanted} ranks joined; {state}"


def _pod_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _running(pod: Obj) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or ()
    return bool(statuses) and all("running" in (cs.get("state") or {}) for cs in statuses)


def group_summary(nodes: int, gpus_per_node: int) -> str:
    """How one model is split across a StatefulSet's nodes, for the Workspace status."""
    return (
        f"one model across {nodes} nodes: tensor-parallel {gpus_per_node} (GPUs per node) x "
        f"pipeline-parallel {nodes} (nodes); a worker pod is ready once it joined pod 0, "
        "pod 0 once every rank joined and the model loaded"
    )


def _inference_verdict(workload: Obj, current_pods: list[Obj], *, kind: str) -> Verdict:
    wanted, ready, updated, observed = _ready_counts(workload)
    name = workload["metadata"]["name"]
    if observed and ready >= wanted and updated >= wanted:
        return Verdict(
            "True", "InferenceReady", f"{kind} {name}: {ready}/{wanted} replica(s) ready"
        )
    ordered = sorted(current_pods, key=lambda p: p["metadata"]["name"])
    for pod in ordered:
        problem = pod_problem(pod) or _restarted_problem(pod)
        if problem is not None:
            return Verdict("False", problem[0], problem[1])
    downloading = _downloading(ordered)
    if downloading is not None:
        return downloading
    if observed and updated < wanted and ready > 0:
        return Verdict(
            "False",
            "RolloutInProgress",
            f"{kind} {name}: rolling out a new revision, {updated}/{wanted} updated, {ready} ready",
        )
    return Verdict(
        "False",
        "InferenceStarting",
        f"{kind} {name}: {ready}/{wanted} replica(s) ready; the inference server is starting "
        "(pulling the image and loading the weights can take minutes)",
    )


def _job_condition(job: Obj, type_: str) -> Obj | None:
    for cond in (job.get("status") or {}).get("conditions") or ():
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def job_verdicts(job: Obj | None, pods: Iterable[Obj]) -> tuple[Verdict, Verdict]:
    """(JobStarted, WorkspaceReady) of a tuning Workspace's Job."""
    pods = sorted(pods, key=lambda p: p["metadata"]["name"])
    if job is None:
        pending = Verdict("False", "JobNotCreated", "the tuning Job has not been created yet")
        return pending, pending
    name = job["metadata"]["name"]
    status = job.get("status") or {}
    started = bool(status.get("startTime")) or bool(status.get("active"))
    started_v = (
        Verdict("True", "JobStarted", f"Job {name} started at {status.get('startTime')}")
        if started
        else Verdict("False", "JobPending", f"Job {name} has not started a pod yet")
    )
    if _job_condition(job, "Complete") is not None:
        return started_v, Verdict(
            "True",
            "TuningSucceeded",
            f"Job {name} completed at {status.get('completionTime')}: the adapter is written",
        )
    failed = _job_condition(job, "Failed")
    problems = [p for p in (pod_problem(pod) for pod in pods) if p is not None]
    if failed is not None:
        detail = f"; {problems[0][1]}" if problems else ""
        return started_v, Verdict(
            "False",
            "TuningFailed",
            _short(f"Job {name} failed: {failed.get('message') or failed.get('reason')}{detail}"),
        )
    if problems:
        reason, message = problems[0]
        return started_v, Verdict("False", reason, message)
    downloading = _downloading(pods)
    if downloading is not None:
        return started_v, downloading
    active = int(status.get("active") or 0)
    return started_v, Verdict(
        "False", "TuningInProgress", f"Job {name}: {active} pod(s) running, not yet complete"
    )

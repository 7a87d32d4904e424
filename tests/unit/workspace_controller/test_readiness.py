"""InferenceReady / JobStarted / WorkspaceReady from workload and pod status."""

from __future__ import annotations

from typing import Any

from kaito.controllers.workspace.status.readiness import (
    group_summary,
    inference_verdict,
    job_verdicts,
    pod_problem,
)

Obj = dict[str, Any]


def deployment(replicas: int = 1, ready: int = 0, updated: int = 0, gen: int = 1) -> Obj:
    return {
        "metadata": {"name": "ws", "generation": gen},
        "spec": {"replicas": replicas},
        "status": {"readyReplicas": ready, "updatedReplicas": updated, "observedGeneration": gen},
    }


def pod(name: str = "ws-abc", **status: Any) -> Obj:
    return {"metadata": {"name": name}, "status": status}


def waiting(reason: str, message: str = "", last: Obj | None = None) -> Obj:
    cs: Obj = {"name": "inference", "state": {"waiting": {"reason": reason, "message": message}}}
    if last:
        cs["lastState"] = {"terminated": last}
    return cs


def test_ready_when_every_replica_of_the_current_revision_is_ready() -> None:
    v = inference_verdict(deployment(2, 2, 2), [], kind="Deployment")
    assert (v.status, v.reason) == ("True", "InferenceReady")
    assert "2/2" in v.message


def test_image_pull_backoff_is_reported_with_kubelets_message() -> None:
    p = pod(containerStatuses=[waiting("ImagePullBackOff", 'Back-off pulling image "x"')])
    v = inference_verdict(deployment(), [p], kind="Deployment")
    assert (v.status, v.reason) == ("False", "ImagePullBackOff")
    assert 'Back-off pulling image "x"' in v.message
    assert "ws-abc" in v.message


def test_crash_loop_carries_the_last_exit_and_log_tail_and_oom_is_named() -> None:
    crash = waiting("CrashLoopBackOff", "back-off 10s", {"exitCode": 3, "message": "boom"})
    v = inference_verdict(deployment(), [pod(containerStatuses=[crash])], kind="Deployment")
    assert v.reason == "CrashLoopBackOff"
    assert "last exit code 3: boom" in v.message
    oom = waiting("CrashLoopBackOff", "", {"exitCode": 137, "reason": "OOMKilled"})
    v = inference_verdict(deployment(), [pod(containerStatuses=[oom])], kind="Deployment")
    assert v.reason == "OOMKilled"


def test_unschedulable_carries_the_schedulers_message() -> None:
    p = pod(
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ]
    )
    assert pod_problem(p) == (
        "Unschedulable",
        "pod ws-abc: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    )


def test_starting_and_rollout_in_progress() -> None:
    v = inference_verdict(deployment(1, 0, 1), [pod()], kind="Deployment")
    assert v.reason == "InferenceStarting"
    v = inference_verdict(deployment(2, 1, 1), [pod()], kind="Deployment")
    assert v.reason == "RolloutInProgress"
    stale = deployment(1, 1, 1, gen=2)
    stale["status"]["observedGeneration"] = 1
    assert inference_verdict(stale, [], kind="Deployment").status == "False"


def test_job_verdicts() -> None:
    started, done = job_verdicts(None, [])
    assert (started.reason, done.reason) == ("JobNotCreated", "JobNotCreated")
    job: Obj = {"metadata": {"name": "t"}, "status": {"startTime": "x", "active": 1}}
    started, done = job_verdicts(job, [])
    assert (started.status, done.reason) == ("True", "TuningInProgress")
    job["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    assert job_verdicts(job, [])[1].reason == "TuningSucceeded"
    job["status"]["conditions"] = [
        {"type": "Failed", "status": "True", "message": "Job has reached the backoff limit"}
    ]
    _, done = job_verdicts(job, [])
    assert (done.status, done.reason) == ("False", "TuningFailed")
    assert "backoff limit" in done.message


def tuning_pod(tuning: Obj, pusher: Obj, phase: str = "Failed") -> Obj:
    """A tuning Job's pod as kubelet writes it: statuses sorted by container name."""
    return {
        "metadata": {"name": "tune-abc12"},
        "spec": {"containers": [{"name": "tuning"}, {"name": "pusher"}]},
        "status": {
            "phase": phase,
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {"name": "pusher", "ready": False, "restartCount": 0, "state": pusher},
                {"name": "tuning", "ready": False, "restartCount": 0, "state": tuning},
            ],
        },
    }


REFUSED = (
    "Unauthorized: pushing myacr.azurecr.io/out:0.0.1: the registry refused the credentials "
    "of secret acr-secret"
)


def test_a_refused_push_names_its_reason_on_the_workspace() -> None:
    finished = {"exitCode": 0, "reason": "Completed", "startedAt": "t0", "finishedAt": "t1"}
    refused = {"exitCode": 3, "reason": "Error", "message": REFUSED + "\n", "finishedAt": "t2"}
    pod = tuning_pod({"terminated": finished}, {"terminated": refused})
    assert pod_problem(pod) == (
        "Unauthorized",
        f"pod tune-abc12: container pusher exited 3: {REFUSED}",
    )
    job: Obj = {"metadata": {"name": "tune"}, "status": {"startTime": "t0", "failed": 1}}
    _, ready = job_verdicts(job, [pod])  # the Job retries: the pod's reason meanwhile
    assert (ready.status, ready.reason) == ("False", "Unauthorized")
    job["status"]["conditions"] = [
        {
            "type": "Failed",
            "status": "True",
            "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit",
        }
    ]
    _, ready = job_verdicts(job, [pod])
    assert ready.reason == "TuningFailed"
    assert ready.message.endswith(f"container pusher exited 3: {REFUSED}")


def test_the_tuning_containers_failure_comes_before_the_pushers_nothing_to_push() -> None:
    crashed = {"exitCode": 1, "reason": "Error", "message": "Traceback (most recent call last)"}
    gave_up = {
        "exitCode": 1,
        "reason": "Error",
        "message": "TuningFailed: the tuning container failed; nothing to push",
    }
    reason, message = pod_problem(tuning_pod({"terminated": crashed}, {"terminated": gave_up}))
    assert reason == "Error"  # kubelet's: the log tail starts with no reason word
    assert "container tuning exited 1: Traceback" in message


def test_a_running_pusher_is_no_problem() -> None:
    running = {"running": {"startedAt": "t0"}}
    assert pod_problem(tuning_pod(running, running, phase="Running")) is None


def test_a_refused_adapter_pull_in_a_restart_loop_names_its_reason() -> None:
    message = (
        "Unauthorized: pulling myacr.azurecr.io/adapter:0.0.1: the registry refused the "
        "credentials of secret acr-pull\n"
    )
    pod: Obj = {
        "metadata": {"name": "ws-abc"},
        "spec": {"initContainers": [{"name": "adapter-0"}], "containers": [{"name": "inference"}]},
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {
                    "name": "adapter-0",
                    "restartCount": 3,
                    "state": {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": "back-off 40s restarting failed container=adapter-0",
                        }
                    },
                    "lastState": {
                        "terminated": {"exitCode": 3, "reason": "Error", "message": message}
                    },
                }
            ],
            "containerStatuses": [
                {"name": "inference", "state": {"waiting": {"reason": "PodInitializing"}}}
            ],
        },
    }
    reason, text = pod_problem(pod)  # type: ignore[misc]
    assert reason == "Unauthorized"
    assert "container adapter-0: CrashLoopBackOff: last exit code 3: Unauthorized: pulling" in text


def test_a_group_that_lost_a_rank_names_the_reason_pod_0_gave_while_it_restarts() -> None:
    lost = "GroupRankLost: rank 1 (ws-1.ws-headless.ns.svc) lost: no healthy answer for 5 s"
    head = pod(
        "ws-0",
        containerStatuses=[
            {
                "name": "inference",
                "ready": False,
                "restartCount": 1,
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 1, "message": lost}},
            }
        ],
    )
    group = group_summary(2, 4)
    v = inference_verdict(deployment(2, 1, 2), [head], kind="StatefulSet", group=group)
    assert (v.status, v.reason) == ("False", "GroupRankLost")
    assert v.message.startswith(
        "one model across 2 nodes: tensor-parallel 4 (GPUs per node) x pipeline-parallel 2"
    )
    assert "pod ws-0: container inference restarted (exit code 1) after: GroupRankLost" in (
        v.message
    )
    ready = inference_verdict(deployment(2, 2, 2), [head], kind="StatefulSet", group=group)
    assert (ready.status, ready.reason) == ("True", "InferenceReady")
    assert "pipeline-parallel 2 (nodes)" in ready.message


def test_a_starting_group_says_how_many_ranks_joined_pod_0() -> None:
    group = group_summary(3, 2)
    running = [{"name": "inference", "ready": False, "state": {"running": {}}}]
    ready = [{"type": "Ready", "status": "True"}]
    head = pod("ws-0", containerStatuses=running)
    joined = pod("ws-1", containerStatuses=running, conditions=ready)
    joining = pod(
        "ws-2", containerStatuses=running, conditions=[{"type": "Ready", "status": "False"}]
    )

    def message(*pods: Obj) -> str:
        v = inference_verdict(deployment(3, 1, 3), list(pods), kind="StatefulSet", group=group)
        assert (v.status, v.reason) == ("False", "InferenceStarting")
        assert v.message.startswith(f"{group}; StatefulSet ws: ")
        return v.message.removeprefix(f"{group}; StatefulSet ws: ")

    assert message() == "0/3 ranks joined; pod ws-0 is not running yet"
    assert message(head, joining) == "1/3 ranks joined; pod ws-0 waits for ws-1, ws-2"
    assert message(head, joined, joining) == "2/3 ranks joined; pod ws-0 waits for ws-2"
    assert message(
        head, joined, {**joining, "status": {**joining["status"], "conditions": ready}}
    ) == ("3/3 ranks joined; pod ws-0 is loading the model")


def test_a_ready_container_that_once_restarted_is_no_problem() -> None:
    cs = {
        "name": "inference",
        "ready": True,
        "lastState": {"terminated": {"exitCode": 1, "message": "GroupHeadLost: rank 0 lost"}},
    }
    v = inference_verdict(deployment(2, 1, 2), [pod(containerStatuses=[cs])], kind="StatefulSet")
    assert v.reason == "InferenceStarting"

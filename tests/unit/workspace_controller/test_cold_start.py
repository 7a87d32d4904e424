"""Cold start, as the controller folds it: ``DownloadingWeights`` from the fetcher's
progress annotation, a failed fetch's reason as kubelet reports an init container, and
``status.coldStart`` (each phase's end, recorded once per revision)."""

from __future__ import annotations

import json
from typing import Any

from kaito.api.workspace import ColdStartPhase
from kaito.controllers.workspace.status.coldstart import (
    ColdStartView,
    fold,
    format_seconds,
    observed_phases,
    step_message,
)
from kaito.controllers.workspace.status.readiness import inference_verdict, job_verdicts
from kaito.controllers.workspace.status.weights import format_bytes

Obj = dict[str, Any]

REV = "f" * 64
REPO, COMMIT = "microsoft/Phi-3-mini-4k-instruct", "0a67737cc96d2554230f90338b163bc6380a2a85"
FETCH_ARGV = [
    "python", "-m", "kaito_inference.fetch", "--repo", REPO, "--revision", COMMIT,
    "--cache-dir", "/var/lib/kaito/models",
]  # fmt: skip
CREATED = "2026-08-01T10:00:00Z"


def t(seconds: int) -> str:
    """``CREATED`` plus ``seconds``."""
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"2026-08-01T{10 + h:02d}:{m:02d}:{s:02d}Z"


def deployment() -> Obj:
    return {
        "metadata": {"name": "ws", "generation": 1},
        "spec": {"replicas": 1},
        "status": {"readyReplicas": 0, "updatedReplicas": 1, "observedGeneration": 1},
    }


def fetching_pod(
    fetch_state: Obj,
    *,
    name: str = "ws-abc",
    progress: Obj | None = None,
    last: Obj | None = None,
    restarts: int = 0,
) -> Obj:
    """A pod as kubelet reports it while (or after) its fetch-weights init container runs."""
    annotations = {"workspace.kaito.io/hash": REV}
    if progress is not None:
        annotations["kaito.sh/weights-progress"] = json.dumps(progress, separators=(",", ":"))
    fetch: Obj = {
        "name": "fetch-weights",
        "ready": False,
        "restartCount": restarts,
        "image": "registry/kaito-python/inference:1",
        "imageID": "",
        "state": fetch_state,
    }
    if last is not None:
        fetch["lastState"] = {"terminated": last}
    return {
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "initContainers": [{"name": "fetch-weights", "command": FETCH_ARGV}],
            "containers": [{"name": "inference"}],
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": t(70)},
                {"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized"},
            ],
            "initContainerStatuses": [fetch],
            "containerStatuses": [
                {
                    "name": "inference",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "PodInitializing"}},
                }
            ],
        },
    }


# -- DownloadingWeights --------------------------------------------------------------------


def test_bytes_are_shown_in_binary_units() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1288490188) == "1.2 GiB"
    assert format_bytes(47500000) == "45.3 MiB"


def test_a_running_fetch_is_downloading_weights_with_bytes_total_percent_and_rate() -> None:
    progress = {
        "bytesDone": 1288490188,
        "bytesTotal": 8160437862,
        "bytesPerSecond": 47500000,
        "updated": t(90),
    }
    p = fetching_pod({"running": {"startedAt": t(80)}}, progress=progress)
    v = inference_verdict(deployment(), [p], kind="Deployment")
    assert (v.status, v.reason) == ("False", "DownloadingWeights")
    assert v.message == (
        f"pod ws-abc: fetching {REPO}@0a67737: 1.2 GiB of 7.6 GiB (15%), 45.3 MiB/s"
    )


def test_before_its_first_report_the_fetch_is_starting() -> None:
    p = fetching_pod({"running": {"startedAt": t(80)}})
    v = inference_verdict(deployment(), [p], kind="Deployment")
    assert v.reason == "DownloadingWeights"
    assert v.message == f"pod ws-abc: fetching {REPO}@0a67737: starting"
    broken = fetching_pod({"running": {"startedAt": t(80)}}, progress={"bytesDone": "x"})
    assert inference_verdict(deployment(), [broken], kind="Deployment").message.endswith("starting")


def test_a_finished_fetch_is_no_longer_downloading() -> None:
    done = {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": t(200)}}
    p = fetching_pod(done, progress={"bytesDone": 10, "bytesTotal": 10, "bytesPerSecond": 1})
    p["status"]["containerStatuses"][0]["state"] = {"running": {"startedAt": t(201)}}
    v = inference_verdict(deployment(), [p], kind="Deployment")
    assert v.reason == "InferenceStarting"


def test_a_tuning_job_downloading_its_base_model_says_so_on_workspace_ready() -> None:
    job = {"metadata": {"name": "tune"}, "status": {"active": 1, "startTime": t(75)}}
    p = fetching_pod(
        {"running": {"startedAt": t(80)}},
        progress={"bytesDone": 512 << 20, "bytesTotal": 1 << 30, "bytesPerSecond": 10 << 20},
    )
    started, ready = job_verdicts(job, [p])
    assert started.reason == "JobStarted"
    assert (ready.status, ready.reason) == ("False", "DownloadingWeights")
    assert "512.0 MiB of 1.0 GiB (50%), 10.0 MiB/s" in ready.message


# -- a failed fetch ------------------------------------------------------------------------


def test_a_fetch_that_failed_once_names_the_fetchers_reason_and_message() -> None:
    """As kubelet reports an init container that exited 3 with its termination message."""
    message = f"Unauthorized: {REPO}: 401 Unauthorized; set presetOptions.modelAccessSecret\n"
    failed = {
        "terminated": {
            "exitCode": 3,
            "reason": "Error",
            "message": message,
            "startedAt": t(80),
            "finishedAt": t(81),
        }
    }
    v = inference_verdict(deployment(), [fetching_pod(failed)], kind="Deployment")
    assert (v.status, v.reason) == ("False", "Unauthorized")
    assert "container fetch-weights exited 3" in v.message
    assert "set presetOptions.modelAccessSecret" in v.message


def test_a_fetch_in_a_restart_loop_names_its_reason_not_crash_loop_back_off() -> None:
    """Kubelet restarts a failed init container of a Deployment's pod with back-off: the
    reason stays the fetcher's, and the restart loop is in the message, never silent."""
    for reason, message in (
        ("RevisionNotFound", f"RevisionNotFound: {REPO}: revision 'nope' does not exist"),
        ("DiskFull", "DiskFull: /var/lib/kaito/models: No space left on device"),
    ):
        looping = fetching_pod(
            {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
            last={"exitCode": 4, "reason": "Error", "message": message, "finishedAt": t(90)},
            restarts=3,
        )
        v = inference_verdict(deployment(), [looping], kind="Deployment")
        assert v.reason == reason
        assert "CrashLoopBackOff" in v.message
        assert message in v.message


def test_a_tuning_jobs_failed_fetch_fails_the_workspace_with_the_reason_in_the_message() -> None:
    message = f"RepositoryNotFound: {REPO}: no such repository"
    failed = fetching_pod({"terminated": {"exitCode": 5, "reason": "Error", "message": message}})
    job = {
        "metadata": {"name": "tune"},
        "status": {
            "failed": 3,
            "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"},
            ],
        },
    }
    _started, ready = job_verdicts(job, [failed])
    assert ready.reason == "TuningFailed"
    assert message in ready.message
    _started, ready = job_verdicts({**job, "status": {"active": 1}}, [failed])
    assert ready.reason == "RepositoryNotFound"


# -- status.coldStart ----------------------------------------------------------------------


def machine(created: str) -> Obj:
    return {"metadata": {"name": "ws-0", "creationTimestamp": created}}


def node(ready_at: str) -> Obj:
    return {
        "metadata": {"name": "aks-ws-0"},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ready_at}]
        },
    }


def served_pod(name: str = "ws-abc", revision: str = REV, offset: int = 0) -> Obj:
    """A pod whose fetch ended at 200 s, whose server turned Ready at 260 s."""
    p = fetching_pod(
        {
            "terminated": {
                "exitCode": 0,
                "reason": "Completed",
                "startedAt": t(80 + offset),
                "finishedAt": t(200 + offset),
            }
        },
        name=name,
    )
    p["metadata"]["annotations"]["workspace.kaito.io/hash"] = revision
    p["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": t(70 + offset)},
        {"type": "Ready", "status": "True", "lastTransitionTime": t(260 + offset)},
    ]
    p["status"]["containerStatuses"][0]["state"] = {"running": {"startedAt": t(201 + offset)}}
    return p


def full_view(**kw: Any) -> ColdStartView:
    base: dict[str, Any] = {
        "revision": REV,
        "machines": [machine(t(1))],
        "nodes": [node(t(60))],
        "pods": [served_pod()],
        "ready_at": t(261),
    }
    return ColdStartView(**{**base, **kw})


def phases(record: Obj) -> list[tuple[str, int]]:
    return [(p["phase"], p["seconds"]) for p in record["phases"]]


def test_every_phase_from_machine_to_ready_is_recorded_in_order_with_seconds() -> None:
    record, added = fold(None, full_view(), created=CREATED, now=t(300))
    assert record["revision"] == REV[:12]
    assert record["startedAt"] == CREATED
    assert phases(record) == [
        ("MachineCreated", 1),
        ("NodeReady", 60),
        ("PodScheduled", 70),
        ("ImagePulled", 80),
        ("WeightsFetched", 200),
        ("ServerLoaded", 260),
        ("Ready", 261),
    ]
    assert record["phases"][4]["time"] == t(200)
    assert added == record["phases"]
    assert step_message(record, added[4], created=CREATED) == (
        "WeightsFetched 3m20s after the Workspace was created (2m0s after ImagePulled)"
    )


def test_a_recorded_phase_is_never_rewritten_and_steady_state_adds_nothing() -> None:
    first, _ = fold(None, full_view(), created=CREATED, now=t(300))
    # the pod restarts later: its Ready time moves, the record does not
    later = served_pod()
    later["status"]["conditions"][1]["lastTransitionTime"] = t(900)
    again, added = fold(first, full_view(pods=[later]), created=CREATED, now=t(950))
    assert again == first
    assert added == []


def test_phases_are_recorded_as_they_end() -> None:
    record, added = fold(
        None, full_view(nodes=[], pods=[], ready_at=None), created=CREATED, now=t(5)
    )
    assert phases(record) == [("MachineCreated", 1)]
    fetching = fetching_pod({"running": {"startedAt": t(80)}})
    record, added = fold(
        record, full_view(pods=[fetching], ready_at=None), created=CREATED, now=t(90)
    )
    assert [a["phase"] for a in added] == ["NodeReady", "PodScheduled", "ImagePulled"]
    record, added = fold(record, full_view(), created=CREATED, now=t(300))
    assert [a["phase"] for a in added] == ["WeightsFetched", "ServerLoaded", "Ready"]


def test_a_phase_of_several_replicas_ends_when_the_last_wanted_pod_reaches_it() -> None:
    two = full_view(pods=[served_pod("a"), served_pod("b", offset=30)], wanted=2)
    assert (
        observed_phases(two)[ColdStartPhase.WEIGHTS_FETCHED]
        == observed_phases(full_view(pods=[served_pod(offset=30)]))[ColdStartPhase.WEIGHTS_FETCHED]
    )
    one_of_two = full_view(pods=[served_pod("a")], wanted=2, ready_at=None)
    record, _ = fold(None, one_of_two, created=CREATED, now=t(0))
    assert [p for p, _ in phases(record)] == ["MachineCreated", "NodeReady"]
    # a Job's retry: the first pod to reach a phase ends it
    retry = full_view(pods=[served_pod("a"), served_pod("b", offset=30)], wanted=1)
    assert observed_phases(retry) == observed_phases(full_view())


def test_a_changed_revision_starts_a_new_record_of_its_pods_only() -> None:
    first, _ = fold(None, full_view(), created=CREATED, now=t(300))
    new_rev = "e" * 64
    rolled = served_pod("ws-new", revision=new_rev, offset=1000)
    old = served_pod()  # still terminating: another revision's, ignored
    record, added = fold(
        first,
        full_view(revision=new_rev, pods=[old, rolled], ready_at=t(1261)),
        created=CREATED,
        now=t(1000),
    )
    assert record["revision"] == new_rev[:12]
    assert record["startedAt"] == t(1000)
    assert phases(record) == [
        ("PodScheduled", 70),
        ("ImagePulled", 80),
        ("WeightsFetched", 200),
        ("ServerLoaded", 260),
        ("Ready", 261),
    ]
    assert step_message(record, added[0], created=CREATED).endswith(
        f"after revision {new_rev[:12]} was first seen"
    )


def test_nodes_ready_before_the_workspace_existed_are_not_part_of_its_cold_start() -> None:
    """byo mode: no Machine, and the node's Ready predates the Workspace."""
    view = full_view(machines=[], nodes=[node("2026-07-01T00:00:00Z")])
    record, _ = fold(None, view, created=CREATED, now=t(300))
    assert [p for p, _ in phases(record)][:2] == ["PodScheduled", "ImagePulled"]


def test_a_ready_condition_older_than_the_revisions_pods_is_not_its_ready() -> None:
    first, _ = fold(None, full_view(), created=CREATED, now=t(300))
    new_rev = "e" * 64
    rolled = served_pod("ws-new", revision=new_rev, offset=1000)
    record, _ = fold(
        first,
        full_view(revision=new_rev, pods=[rolled], ready_at=t(261)),
        created=CREATED,
        now=t(1000),
    )
    assert phases(record)[-1] == ("Ready", 260)  # at its ServerLoaded, not before it


def test_tuning_has_no_server_to_load() -> None:
    record, _ = fold(None, full_view(serves=False, ready_at=None), created=CREATED, now=t(300))
    assert "ServerLoaded" not in [p for p, _ in phases(record)]


def test_seconds_read_as_durations() -> None:
    assert format_seconds(7) == "7s"
    assert format_seconds(95) == "1m35s"
    assert format_seconds(3725) == "1h2m5s"

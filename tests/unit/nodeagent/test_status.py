"""Pod phase and conditions as kubelet computes them; the IP pool."""

from __future__ import annotations

import pytest

from kaito_dev.nodeagent.network import IPPool
from kaito_dev.nodeagent.probe import probe_port
from kaito_dev.nodeagent.status import ContainerState, PodState, pod_phase, pod_status


def test_phase_follows_kubelets_rules() -> None:
    c = ContainerState("c", "img")
    state = PodState(main=[c], restart_policy="Never")
    assert pod_phase(state) == "Pending"  # not initialised
    state.initialized = True
    assert pod_phase(state) == "Pending"  # waiting
    c.run()
    assert pod_phase(state) == "Running"
    c.terminate(0)
    assert pod_phase(state) == "Succeeded"
    c.terminate(3, "boom")
    assert pod_phase(state) == "Failed"
    state.restart_policy = "Always"
    c.back_off("CrashLoopBackOff", "back-off 10s")
    assert pod_phase(state) == "Running"  # a crash-looping container counts as stopped
    state.failed_init = True
    assert pod_phase(state) == "Failed"


def test_status_reports_last_state_restarts_and_readiness() -> None:
    c = ContainerState("c", "img")
    state = PodState(main=[c], pod_ip="127.0.1.3", initialized=True)
    c.run()
    c.terminate(1, "Traceback ...")
    c.back_off("CrashLoopBackOff", "back-off 0.5s")
    c.restart_count = 1
    status = pod_status(state)
    (cs,) = status["containerStatuses"]
    assert cs["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 0.5s"}}
    assert cs["lastState"]["terminated"]["message"] == "Traceback ..."
    assert cs["restartCount"] == 1
    assert status["podIP"] == "127.0.1.3"
    assert status["podIPs"] == [{"ip": "127.0.1.3"}]
    conds = {x["type"]: x["status"] for x in status["conditions"]}
    assert conds == {"Initialized": "True", "Ready": "False", "ContainersReady": "False",
                     "PodScheduled": "True"}  # fmt: skip
    c.run()
    c.ready = True
    conds = {x["type"]: x["status"] for x in pod_status(state)["conditions"]}
    assert conds["Ready"] == "True"


def test_conditions_are_written_as_kubelet_writes_them() -> None:
    c = ContainerState("c", "img")
    state = PodState(main=[c])
    state.conditions.set_bool("VolumesReady", False, "UnsupportedVolume", "hostPath")
    first = pod_status(state)["conditions"]
    times = {x["type"]: x.pop("lastTransitionTime") for x in first}
    assert first == [
        {"type": "Initialized", "status": "False", "lastProbeTime": None,
         "reason": "ContainersNotInitialized"},
        {"type": "Ready", "status": "False", "lastProbeTime": None,
         "reason": "ContainersNotReady"},
        {"type": "ContainersReady", "status": "False", "lastProbeTime": None,
         "reason": "ContainersNotReady"},
        {"type": "PodScheduled", "status": "True", "lastProbeTime": None},
        {"type": "VolumesReady", "status": "False", "lastProbeTime": None,
         "reason": "UnsupportedVolume", "message": "hostPath"},
    ]  # fmt: skip
    # An unchanged status keeps its transition time; a changed one gets a new time.
    state.conditions.data["conditions"][0]["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    state.conditions.data["conditions"][3]["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    state.initialized = True
    again = {x["type"]: x for x in pod_status(state)["conditions"]}
    assert again["PodScheduled"]["lastTransitionTime"] == "2000-01-01T00:00:00Z"
    assert again["Initialized"]["status"] == "True"
    assert "reason" not in again["Initialized"]
    assert again["Initialized"]["lastTransitionTime"] != "2000-01-01T00:00:00Z"
    assert again["Ready"]["lastTransitionTime"] == times["Ready"]


def test_ip_pool_hands_out_distinct_addresses_and_skips_ones_in_use() -> None:
    pool = IPPool(lambda: ["127.0.1.1"])
    a = pool.allocate("pod-a")
    b = pool.allocate("pod-b")
    assert a != b
    assert "127.0.1.1" not in (a, b)
    assert pool.allocate("pod-a") == a  # stable per owner
    pool.release("pod-a")
    assert len(pool) == 1


def test_probe_ports_are_numbers_or_container_port_names() -> None:
    spec = {"ports": [{"name": "http", "containerPort": 5000}]}
    assert probe_port(5000, spec) == 5000
    assert probe_port("8080", spec) == 8080
    assert probe_port("http", spec) == 5000
    with pytest.raises(ValueError, match="names no container port"):
        probe_port("metrics", spec)

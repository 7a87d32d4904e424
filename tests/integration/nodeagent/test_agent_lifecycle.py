"""The agent as a process: its children die with it, and a new agent starts pods again."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import pytest

from kaito.runtime.client import Client
from kaito.runtime.resource import DEPLOYMENTS
from kaito_dev.controlplane import REPO_ROOT
from tests.integration.nodeagent.conftest import NodeAgentRig, agent_processes
from tests.integration.nodeagent.test_serving import inference_deployment
from tests.integration.polling import poll_until

pytestmark = pytest.mark.cluster

Obj = dict[str, Any]


def _running_pid(pod: Obj | None) -> bool:
    for cs in (pod or {}).get("status", {}).get("containerStatuses") or ():
        return "running" in cs["state"]
    return False


def _ready(pod: Obj | None) -> bool:
    for cs in (pod or {}).get("status", {}).get("containerStatuses") or ():
        return bool(cs["ready"])
    return False


async def test_children_die_with_a_killed_agent_and_a_new_agent_restarts_the_pod(
    client: Client, narig: NodeAgentRig, kubeconfig: str, tmp_path: Any
) -> None:
    await narig.stop()  # the CLI agent below serves the Node instead
    state = tmp_path / "cli-agent"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kaito_dev",
        "node-agent",
        "--kubeconfig",
        kubeconfig,
        "--state-dir",
        str(state),
        "--node-selector",
        narig.selector,
        "--restart-backoff",
        "0.5",
        cwd=str(REPO_ROOT),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        ns = narig.namespace
        await client.create(DEPLOYMENTS, inference_deployment("tiny"), ns)
        first = await poll_until(
            lambda: narig.pod_of("app", "tiny"),
            _running_pid,
            timeout=90,
            what="the CLI agent's container running",
            interval=0.2,
        )
        assert first is not None
        children = agent_processes(state)
        assert children, "the CLI agent started the server as a local process"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    # PR_SET_PDEATHSIG: the server goes with the agent, no clean-up code ran.
    async def leftovers() -> Obj:
        return {"items": agent_processes(state)}

    await poll_until(
        leftovers, lambda o: not (o or {})["items"], timeout=10, what="children of the dead agent"
    )

    # A new agent adopts nothing: it starts the pod's container again and reports it Ready.
    narig.start()
    pod = await poll_until(
        lambda: narig.pod_of("app", "tiny"),
        lambda p: _ready(p) and (p or {})["status"]["podIP"] != first["status"]["podIP"],
        timeout=90,
        what="the pod Ready again under the new agent",
        interval=0.2,
    )
    assert pod is not None
    assert pod["metadata"]["uid"] == first["metadata"]["uid"]
    assert state.is_dir(), "the dead agent's folder stays (nobody cleaned it up)"

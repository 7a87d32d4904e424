"""Session-wide fixtures: one real control plane per test session, an API client.

The control plane is real (etcd + kube-apiserver + controller-manager + scheduler, see
TEST-CLUSTER.md). A test that needs it and cannot get it FAILS with the reason: there is
no skip path. Set ``KAITO_TEST_KUBECONFIG`` to run against an already running cluster
(e.g. one from ``kaito dev cluster up``) and save the start-up while iterating.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kaito.runtime.client import Client, ClientConfig
from kaito_dev.controlplane import ControlPlane, ControlPlaneError, ControlPlaneState

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneState]:
    reuse = os.environ.get("KAITO_TEST_KUBECONFIG")
    if reuse:
        state_file = Path(reuse).parent / "state.json"
        yield ControlPlaneState.load(state_file.parent)
        return
    # The audit log lets tests prove which process wrote what, and when.
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"), audit=True)
    try:
        state = plane.start(progress=lambda msg: print(f"[control-plane] {msg}", file=sys.stderr))
    except ControlPlaneError as e:
        pytest.fail(f"the local control plane could not start: {e}", pytrace=False)
    try:
        yield state
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlaneState) -> str:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
async def client(kubeconfig: str) -> AsyncIterator[Client]:
    async with Client(await ClientConfig.from_kubeconfig(kubeconfig)) as c:
        version = await c.server_version()
        print(f"[control-plane] kube-apiserver {version['gitVersion']}", file=sys.stderr)
        yield c

"""A Machine create the apiserver refuses: a Warning event, the reason on the Workspace,
and an error for the controller to retry with backoff.

The integration tests cover the flow against a real apiserver; this fault (an apiserver
that rejects a well-formed Machine, e.g. a policy webhook) is one a test cannot produce
on demand there, so the client here is scripted. So is the reconciler's catalog in the
last test: one without the Workspace's preset (a Workspace the webhook would refuse).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kaito.controllers.workspace.reconcile import WorkspaceReconciler
from kaito.controllers.workspace.workload.sync import WorkloadCaches
from kaito.presets.catalog import Catalog, load_catalog
from kaito.runtime.cache import Cache
from kaito.runtime.errors import AlreadyExists, ApiError
from kaito.runtime.reconcile import Request, TerminalError

Obj = dict[str, Any]


class ScriptedClient:
    def __init__(self, create_error: Exception) -> None:
        self.create_error = create_error
        self.patches: list[tuple[str, Obj, str | None]] = []
        self.creates: list[Obj] = []

    async def patch(
        self, res: Any, name: str, patch: Obj, namespace: str | None = None, **kw: Any
    ) -> Obj:
        self.patches.append((name, patch, kw.get("subresource")))
        meta = {**patch.get("metadata", {}), "name": name, "namespace": namespace}
        meta["resourceVersion"] = "2"
        return {"metadata": meta}

    async def create(self, res: Any, body: Obj, **kw: Any) -> Obj:
        self.creates.append(body)
        raise self.create_error


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        self.events.append((str(type_), reason, message))


def reconciler(
    client: ScriptedClient, recorder: Recorder, catalog: Catalog | None = None
) -> WorkspaceReconciler:
    workspaces = Cache()
    workspaces.upsert(
        {
            "apiVersion": "kaito.sh/v1beta1",
            "kind": "Workspace",
            "metadata": {"name": "phi", "namespace": "ns", "resourceVersion": "1", "uid": "u"},
            "resource": {
                "instanceType": "Standard_NC6s_v3",
                "count": 2,
                "labelSelector": {"matchLabels": {"apps": "phi"}},
            },
            "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
        }
    )
    return WorkspaceReconciler(
        client=client,  # type: ignore[arg-type]
        catalog=catalog or load_catalog(),
        workspaces=workspaces,
        machines=Cache(),
        nodes=Cache(),
        recorder=recorder,  # type: ignore[arg-type]
        workload=WorkloadCaches(*(Cache() for _ in range(9))),
    )


async def test_a_refused_machine_create_is_an_event_a_condition_and_a_retry() -> None:
    denied = ApiError(403, reason="Forbidden", message="machines are not allowed here")
    client, recorder = ScriptedClient(denied), Recorder()
    with pytest.raises(RuntimeError, match="machines are not allowed here"):
        await reconciler(client, recorder).reconcile(Request("ns", "phi"))
    assert len(client.creates) == 2, "both Machines are tried at once"
    assert [e[:2] for e in recorder.events] == [("Warning", "MachineCreationFailed")] * 2
    (status_patch,) = [p for _, p, sub in client.patches if sub == "status"]
    conds = {c["type"]: c for c in status_patch["status"]["conditions"]}
    assert conds["MachineReady"]["status"] == "False"
    assert conds["MachineReady"]["reason"] == "MachineCreationFailed"
    assert "machines are not allowed here" in conds["ResourceReady"]["message"]


async def test_machines_that_exist_already_are_not_an_error() -> None:
    client, recorder = ScriptedClient(AlreadyExists(409, reason="AlreadyExists")), Recorder()
    assert await reconciler(client, recorder).reconcile(Request("ns", "phi")) is None
    assert recorder.events == []
    (status_patch,) = [p for _, p, sub in client.patches if sub == "status"]
    conds = {c["type"]: c for c in status_patch["status"]["conditions"]}
    assert conds["MachineReady"]["status"] == "Unknown"
    assert conds["ResourceReady"]["reason"] == "WaitingForNodes"


async def test_a_preset_the_injected_catalog_lacks_stops_before_any_machine() -> None:
    """The reconciler plans from the catalog it was given, not from the packaged one."""
    client, recorder = ScriptedClient(AssertionError("no create expected")), Recorder()
    without_presets = dataclasses.replace(load_catalog(), presets={})
    with pytest.raises(TerminalError, match="not in the catalog"):
        await reconciler(client, recorder, without_presets).reconcile(Request("ns", "phi"))
    assert client.creates == []
    (status_patch,) = [p for _, p, sub in client.patches if sub == "status"]
    conds = {c["type"]: c for c in status_patch["status"]["conditions"]}
    assert conds["ResourceReady"]["reason"] == "PresetNotFound"

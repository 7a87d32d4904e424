"""The runtime client against the real kube-apiserver: verbs, patch types, errors."""

from __future__ import annotations

import time
import uuid

import pytest

from kaito.runtime.client import Client, ClientConfig, PatchType
from kaito.runtime.errors import AlreadyExists, Conflict, Invalid, NotFound
from kaito.runtime.resource import CONFIGMAPS, DEPLOYMENTS


def cm(name: str, **data: str) -> dict:
    return {"metadata": {"name": name, "namespace": "default"}, "data": data}


async def test_create_get_list_update_delete_configmap(client: Client) -> None:
    name = f"c-{uuid.uuid4().hex[:8]}"
    created = await client.create(CONFIGMAPS, cm(name, a="1"))
    assert created["metadata"]["uid"]
    got = await client.get(CONFIGMAPS, name, "default")
    assert got["data"] == {"a": "1"}
    listed = await client.list(CONFIGMAPS, "default", field_selector=f"metadata.name={name}")
    assert [i["metadata"]["name"] for i in listed["items"]] == [name]
    got["data"]["a"] = "2"
    updated = await client.update(CONFIGMAPS, got)
    assert updated["data"] == {"a": "2"}
    await client.delete(CONFIGMAPS, name, "default")
    with pytest.raises(NotFound):
        await client.get(CONFIGMAPS, name, "default")


async def test_update_with_stale_resource_version_conflicts(client: Client) -> None:
    name = f"c-{uuid.uuid4().hex[:8]}"
    first = await client.create(CONFIGMAPS, cm(name, a="1"))
    await client.patch(CONFIGMAPS, name, {"data": {"a": "2"}}, "default")
    first["data"]["a"] = "3"
    with pytest.raises(Conflict) as err:
        await client.update(CONFIGMAPS, first)
    assert err.value.status == 409
    assert "modified" in err.value.message
    await client.delete(CONFIGMAPS, name, "default")


async def test_create_existing_name_raises_already_exists(client: Client) -> None:
    name = f"c-{uuid.uuid4().hex[:8]}"
    await client.create(CONFIGMAPS, cm(name))
    with pytest.raises(AlreadyExists):
        await client.create(CONFIGMAPS, cm(name))
    await client.delete(CONFIGMAPS, name, "default")


async def test_invalid_object_message_names_the_field(client: Client) -> None:
    with pytest.raises(Invalid) as err:
        await client.create(CONFIGMAPS, cm("Not_A_Valid_Name"))
    assert "metadata.name" in err.value.message


async def test_every_patch_type(client: Client) -> None:
    name = f"d-{uuid.uuid4().hex[:8]}"
    labels = {"app": name}
    deploy = {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    }
    await client.create(DEPLOYMENTS, deploy)
    merged = await client.patch(DEPLOYMENTS, name, {"metadata": {"labels": {"m": "1"}}}, "default")
    assert merged["metadata"]["labels"] == {"m": "1"}
    jsonp = await client.patch(
        DEPLOYMENTS,
        name,
        [{"op": "replace", "path": "/spec/replicas", "value": 2}],
        "default",
        patch_type=PatchType.JSON,
    )
    assert jsonp["spec"]["replicas"] == 2
    strategic = await client.patch(
        DEPLOYMENTS,
        name,
        {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "y"}]}}}},
        "default",
        patch_type=PatchType.STRATEGIC,
    )
    assert [c["image"] for c in strategic["spec"]["template"]["spec"]["containers"]] == ["y"]
    applied = await client.apply(
        DEPLOYMENTS,
        {"metadata": {"name": name, "namespace": "default", "annotations": {"owner": "ssa"}}},
        field_manager="kaito-test",
    )
    assert applied["metadata"]["annotations"]["owner"] == "ssa"
    await client.delete(DEPLOYMENTS, name, "default")


async def test_client_qps_paces_requests_after_the_burst(client: Client) -> None:
    config = ClientConfig(
        server=client.config.server,
        ssl_context=client.config.ssl_context,
        token=client.config.token,
        qps=20.0,
        burst=2,
        _refresh=client.config._refresh,
    )
    async with Client(config) as throttled:
        started = time.monotonic()
        for _ in range(6):
            await throttled.server_version()
        elapsed = time.monotonic() - started
    # Two requests ride the burst, the other four wait 50 ms each for a token.
    assert elapsed >= 0.19

"""The Workspace CRD and the webhook, installed in the real local apiserver.

The webhook server runs in the test process on 127.0.0.1 (a free port) with its own CA;
it registers a url-based ValidatingWebhookConfiguration, so the apiserver, on the same
machine, calls it over verified TLS exactly as in a cluster. The configuration is
deleted at the end (with ``failurePolicy: Fail`` it would otherwise block Workspace
writes of later tests once this server is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.api.crds import WORKSPACE_CRD
from kaito.api.workspace import WORKSPACES_V1ALPHA1
from kaito.controllers.workspace.admission.webhook import (
    CONFIGURATION_NAME,
    PATH,
    VALIDATING_WEBHOOK_CONFIGURATIONS,
    WebhookOptions,
    WebhookServer,
)
from kaito.runtime.client import Client
from kaito.runtime.errors import AlreadyExists, ApiError, NotFound
from kaito.runtime.resource import CUSTOMRESOURCEDEFINITIONS, NAMESPACES

CRD_PATH = Path(__file__).resolve().parents[3] / "deploy" / "crds" / WORKSPACE_CRD.file_name


async def install_crd(client: Client, crd: dict[str, Any]) -> None:
    """Create or update the CRD, then wait until the apiserver serves it."""
    name = crd["metadata"]["name"]
    try:
        await client.create(CUSTOMRESOURCEDEFINITIONS, crd)
    except AlreadyExists:
        current = await client.get(CUSTOMRESOURCEDEFINITIONS, name)
        crd = {
            **crd,
            "metadata": {
                **crd["metadata"],
                "resourceVersion": current["metadata"]["resourceVersion"],
            },
        }
        await client.update(CUSTOMRESOURCEDEFINITIONS, crd)
    async with asyncio.timeout(30):
        while True:
            got = await client.get(CUSTOMRESOURCEDEFINITIONS, name)
            conditions = {
                c["type"]: c["status"] for c in (got.get("status") or {}).get("conditions") or []
            }
            if conditions.get("Established") == "True":
                return
            await asyncio.sleep(0.1)


async def dry_run_create(client: Client, namespace: str, obj: dict[str, Any]) -> Any:
    return await client.request(
        "POST",
        WORKSPACES_V1ALPHA1.path(namespace=namespace),
        params={"dryRun": "All"},
        body=obj,
    )


@pytest.fixture(scope="module")
async def namespace(client: Client) -> AsyncIterator[str]:
    name = f"ws-admission-{uuid.uuid4().hex[:6]}"
    await client.create(NAMESPACES, {"metadata": {"name": name}})
    yield name
    await client.delete(NAMESPACES, name)


def committed_crd() -> dict[str, Any]:
    """The CRD exactly as committed under deploy/ (what users apply)."""
    (crd,) = [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d]
    return dict(crd)


@pytest.fixture(scope="module")
async def workspace_crd(client: Client) -> None:
    await install_crd(client, committed_crd())


@pytest.fixture(scope="module")
async def webhook(
    client: Client, workspace_crd: None, namespace: str
) -> AsyncIterator[WebhookServer]:
    options = WebhookOptions(
        bind_address="127.0.0.1:0",
        cert_secret="",
        url="https://127.0.0.1:{port}" + PATH,
    )
    server = WebhookServer(client, options)
    await server.start()
    try:
        await _wait_until_called(client, namespace)
        yield server
    finally:
        with contextlib.suppress(NotFound):
            await client.delete(VALIDATING_WEBHOOK_CONFIGURATIONS, CONFIGURATION_NAME)
        await server.stop()


async def _wait_until_called(client: Client, namespace: str) -> None:
    """The apiserver picks up new webhook configurations asynchronously: probe with a
    dry-run of an invalid name until our webhook is the one answering."""
    probe = {
        "apiVersion": "kaito.sh/v1alpha1",
        "kind": "Workspace",
        "metadata": {"name": "probe.not.a.label"},
        "resource": {"labelSelector": {"matchLabels": {"a": "b"}}},
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
    }
    async with asyncio.timeout(30):
        while True:
            try:
                await dry_run_create(client, namespace, probe)
            except ApiError as e:
                if "denied the request" in e.message:
                    return
                raise
            await asyncio.sleep(0.1)

"""Registering a ValidatingWebhookConfiguration through the real apiserver."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from typing import Any

import pytest

from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.webhook import (
    VALIDATING_WEBHOOK_CONFIGURATIONS,
    client_config,
    generate_certificate,
    register,
)


def configuration(name: str, ca: bytes | None, url: str) -> dict[str, Any]:
    """Matches a group nobody serves, and fails open: it can disturb no other test."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "check.example.invalid",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "clientConfig": client_config(url=url, ca_bundle=ca),
                "rules": [
                    {
                        "apiGroups": ["example.invalid"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["foos"],
                    }
                ],
            }
        ],
    }


async def test_register_creates_then_updates_only_the_webhooks_and_is_idempotent(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"registration-{uuid.uuid4().hex[:6]}"
    first = generate_certificate(["127.0.0.1"]).ca_pem
    second = generate_certificate(["127.0.0.1"]).ca_pem
    try:
        # Two replicas registering at once: one creates, the other finds it current.
        desired = configuration(name, first, "https://127.0.0.1:9443/validate")
        await asyncio.gather(register(client, desired), register(client, desired))
        created = await client.get(VALIDATING_WEBHOOK_CONFIGURATIONS, name)
        hook = created["webhooks"][0]["clientConfig"]
        assert base64.b64decode(hook["caBundle"]) == first

        # Labels someone else put on it stay; the webhooks follow the new CA and URL.
        created["metadata"]["labels"] = {"owner": "someone-else"}
        await client.update(VALIDATING_WEBHOOK_CONFIGURATIONS, created)
        await register(client, configuration(name, second, "https://127.0.0.1:9444/validate"))
        updated = await client.get(VALIDATING_WEBHOOK_CONFIGURATIONS, name)
        assert updated["metadata"]["labels"] == {"owner": "someone-else"}
        hook = updated["webhooks"][0]["clientConfig"]
        assert base64.b64decode(hook["caBundle"]) == second
        assert hook["url"] == "https://127.0.0.1:9444/validate"

        # Registering what is there (plus the apiserver's defaults) writes nothing.
        assert "namespaceSelector" in updated["webhooks"][0]  # defaulted by the apiserver
        writes: list[str] = []

        async def no_write(*args: Any, **kwargs: Any) -> Any:
            writes.append("update")
            raise AssertionError("register wrote a configuration that was current")

        monkeypatch.setattr(client, "update", no_write)
        monkeypatch.setattr(client, "create", no_write)
        await register(client, configuration(name, second, "https://127.0.0.1:9444/validate"))
        assert writes == []
    finally:
        with contextlib.suppress(NotFound):
            await client.delete(VALIDATING_WEBHOOK_CONFIGURATIONS, name)


def test_client_config_is_a_url_or_a_service() -> None:
    assert client_config(url="https://x/y") == {"url": "https://x/y"}
    service = client_config(service=("ns", "svc"), path="/p", port=443, ca_bundle=b"pem")
    assert service == {
        "service": {"namespace": "ns", "name": "svc", "path": "/p", "port": 443},
        "caBundle": base64.b64encode(b"pem").decode(),
    }

"""Registering a webhook with the apiserver: a ValidatingWebhookConfiguration, kept current.

A webhook that makes its own CA must tell the apiserver which CA to trust, so at start-up
it creates its configuration or updates the one applied from a manifest (which has no
``caBundle``) with the bundle and where to call it: a Service in a cluster, a URL for an
apiserver outside one. Only ``webhooks`` is compared and written, so labels and
annotations others put on the object stay. The comparison ignores what the apiserver
defaults (``namespaceSelector``, ``objectSelector``, a rule's ``scope``...): a
configuration that already says what we want is not written again.

Register *after* the server listens: with ``failurePolicy: Fail`` a configuration that
points at a closed port blocks every write it matches.
"""

from __future__ import annotations

import base64
from typing import Any

import structlog

from kaito.runtime.client import Client
from kaito.runtime.errors import AlreadyExists, Conflict, NotFound
from kaito.runtime.meta import Obj
from kaito.runtime.resource import Resource

__all__ = ["VALIDATING_WEBHOOK_CONFIGURATIONS", "client_config", "register"]

log = structlog.get_logger("kaito.runtime.webhook.registration")

VALIDATING_WEBHOOK_CONFIGURATIONS = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "validatingwebhookconfigurations",
    "ValidatingWebhookConfiguration",
    namespaced=False,
)


def client_config(
    *,
    url: str | None = None,
    service: tuple[str, str] | None = None,
    path: str = "",
    port: int = 443,
    ca_bundle: bytes | None = None,
) -> Obj:
    """A webhook's ``clientConfig``: ``url``, or ``service`` = (namespace, name) + path/port.

    ``ca_bundle`` (PEM) is base64-encoded as the API wants; None leaves it out (a
    manifest, filled in at start-up).
    """
    config: Obj
    if url:
        config = {"url": url}
    elif service is not None:
        namespace, name = service
        config = {"service": {"namespace": namespace, "name": name, "path": path, "port": port}}
    else:
        raise ValueError("a webhook's clientConfig needs a url or a service")
    if ca_bundle:
        config["caBundle"] = base64.b64encode(ca_bundle).decode()
    return config


def _covers(current: Any, desired: Any) -> bool:
    """``current`` says everything ``desired`` says (dict keys it lacks are defaults)."""
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(
            _covers(current.get(k), v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(current, list)
            and len(current) == len(desired)
            and all(_covers(c, d) for c, d in zip(current, desired, strict=True))
        )
    return bool(current == desired)


async def register(
    client: Client,
    desired: Obj,
    *,
    resource: Resource = VALIDATING_WEBHOOK_CONFIGURATIONS,
    attempts: int = 5,
) -> None:
    """Create the configuration, or make the existing one's webhooks equal ``desired``'s.

    Replicas register at once: a lost create or update race is retried from a fresh read
    (up to ``attempts`` times, default 5). Writes nothing when already current.
    """
    name = desired["metadata"]["name"]
    for _ in range(attempts):
        try:
            current = await client.get(resource, name)
        except NotFound:
            try:
                await client.create(resource, desired)
            except AlreadyExists:
                continue
            log.info("webhook configuration created", kind=resource.kind, name=name)
            return
        if _covers(current.get("webhooks"), desired["webhooks"]):
            return
        current["webhooks"] = desired["webhooks"]
        try:
            await client.update(resource, current)
        except Conflict:
            continue
        log.info("webhook configuration updated", kind=resource.kind, name=name)
        return
    raise RuntimeError(f"could not update {resource.kind} {name}")

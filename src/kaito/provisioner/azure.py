"""Agent pools in Azure: the `AgentPoolAPI` interface and its implementation on the SDK.

The lifecycle talks to Azure through `AgentPoolAPI` only. `AzureAgentPoolAPI` is the
one implementation: ``azure.mgmt.containerservice.aio.ContainerServiceClient`` with an
``azure.identity`` credential, a base-URL override (the emulator in tests and the dev
cluster) and the SDK's own retry policy (408/429/5xx, honouring Retry-After).

Every failure leaves this module as an `AzureError` (`kaito.provisioner.errors`)
carrying the Machine condition reason and ARM's own code and message, so a Machine
says *why* Azure refused, in Azure's words.

Continuation tokens (``poller.continuation_token()``) are base64 JSON holding the
operation's URLs. Tokens are stored on Machines, where anyone allowed to edit a
Machine could rewrite them; `owns_token` refuses a token whose URLs leave the
configured ARM endpoint, so a forged one cannot make the provisioner send its bearer
token elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from azure.core.exceptions import AzureError as SdkAzureError
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.containerservice.models import AgentPool as SdkAgentPool

from kaito.provisioner.errors import AzureError, ErrorReason, classify
from kaito.provisioner.metrics import observe_azure_response

__all__ = [
    "ARM_ENDPOINT",
    "AgentPool",
    "AgentPoolAPI",
    "AgentPoolSpec",
    "AzureAgentPoolAPI",
    "AzureError",
    "ErrorReason",
    "classify",
]

log = structlog.get_logger("kaito.provisioner.azure")

ARM_ENDPOINT = "https://management.azure.com"
# -- what the lifecycle sees -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentPool:
    """An agent pool as ARM reports it (the fields the provisioner reads)."""

    name: str
    vm_size: str
    provisioning_state: str
    """Creating, Succeeded, Failed, Deleting, Updating, ..."""
    count: int = 1
    node_labels: Mapping[str, str] = field(default_factory=dict)
    node_taints: tuple[str, ...] = ()
    os_disk_size_gb: int | None = None
    os_sku: str | None = None

    @classmethod
    def from_arm(cls, body: Mapping[str, Any]) -> AgentPool:
        props = body.get("properties") or {}
        return cls(
            name=str(body.get("name", "")),
            vm_size=str(props.get("vmSize", "")),
            provisioning_state=str(props.get("provisioningState", "")),
            count=int(props.get("count") or 0),
            node_labels=dict(props.get("nodeLabels") or {}),
            node_taints=tuple(props.get("nodeTaints") or ()),
            os_disk_size_gb=props.get("osDiskSizeGB"),
            os_sku=props.get("osSKU"),
        )


@dataclass(frozen=True, slots=True)
class AgentPoolSpec:
    """What to create: one pool of ``count`` VMs of ``vm_size``."""

    name: str
    vm_size: str
    os_disk_size_gb: int
    os_sku: str = "Ubuntu"
    node_labels: Mapping[str, str] = field(default_factory=dict)
    node_taints: tuple[str, ...] = ()
    count: int = 1

    def to_arm(self) -> dict[str, Any]:
        return {
            "properties": {
                "type": "VirtualMachineScaleSets",
                "mode": "User",
                "vmSize": self.vm_size,
                "count": self.count,
                "osType": "Linux",
                "osSKU": self.os_sku,
                "osDiskSizeGB": self.os_disk_size_gb,
                "nodeLabels": dict(self.node_labels),
                "nodeTaints": list(self.node_taints),
            }
        }


OnStarted = Callable[[str], Awaitable[None]]


class AgentPoolAPI(Protocol):
    """Agent pools of one managed cluster. Every method raises `AzureError` on failure."""

    async def get(self, name: str) -> AgentPool | None:
        """The pool, or None when it does not exist."""
        ...

    async def list(self) -> list[AgentPool]: ...

    async def create(
        self, spec: AgentPoolSpec, *, on_started: OnStarted | None = None
    ) -> AgentPool:
        """PUT the pool and wait for the operation; ``on_started(token)`` runs as soon as
        ARM accepted it, with a continuation token for `resume_create`."""
        ...

    async def resume_create(self, token: str) -> AgentPool:
        """Wait for a create started earlier (possibly by another process)."""
        ...

    def owns_token(self, token: str) -> bool:
        """Whether ``token`` is a continuation token for this API's ARM endpoint."""
        ...

    def retrying(self, name: str) -> AzureError | None:
        """The transient failure (408/429/5xx) ARM answered the pool's latest request with,
        while the SDK is still retrying it; None when the latest answer was not one."""
        ...

    async def delete(self, name: str, *, wait: bool = True, reissue: bool = False) -> None:
        """Delete the pool: absent -> done; Deleting -> wait (``reissue``: send the DELETE
        again first, which AKS answers idempotently); else begin delete (and wait)."""
        ...

    async def close(self) -> None: ...


# -- the SDK implementation -----------------------------------------------------------------


def _transport_trusting(ca_file: str) -> Any:
    """An aiohttp transport whose pooled connections verify with ``ca_file``.

    Not ``connection_verify=<path>``: azure-core then builds a new SSLContext for every
    request, and aiohttp pools connections per SSLContext, so each request paid a fresh
    TLS handshake (3 s of CPU for ten Machines against the emulator).
    """
    import ssl

    import aiohttp
    from azure.core.pipeline.transport import AioHttpTransport

    context = ssl.create_default_context(cafile=ca_file)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
    return AioHttpTransport(session=session, session_owner=True)


def _operation(method: str, url: str) -> str:
    path = urllib.parse.urlsplit(url).path.lower()
    if "/operations/" in path or "/operationresults/" in path:
        return "poll"
    if method == "PUT":
        return "create"
    if method == "DELETE":
        return "delete"
    return "list" if path.endswith("/agentpools") else "get"


def _pool_of(url: str) -> str | None:
    """The agent pool a request's URL names (None for lists and operation polls)."""
    parts = urllib.parse.urlsplit(url).path.split("/")
    for i, part in enumerate(parts[:-1]):
        if part.lower() == "agentpools":
            return parts[i + 1] or None
    return None


@dataclass
class _Retrying:
    """Transient answers to a pool's requests since its last other answer."""

    status: int
    operation: str
    retry_after: str | None
    since: str
    answers: int = 1


def _transient(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class AzureAgentPoolAPI:
    """`AgentPoolAPI` on ``azure-mgmt-containerservice``'s async client.

    Args:
        credential: an async token credential (`kaito.provisioner.credentials`).
        base_url: the ARM endpoint; default ``https://management.azure.com``.
        ca_file: a CA bundle to verify ``base_url`` with (the emulator's); default the
            system store.
        polling_interval: seconds between LRO polls when ARM sends no Retry-After;
            default 10 (the SDK's default is 30).
        retry_total, retry_backoff_factor: the SDK retry policy for 408/429/5xx; default
            the SDK's (10 retries, 0.8 s exponential, Retry-After honoured).
    """

    def __init__(
        self,
        *,
        subscription_id: str,
        resource_group: str,
        cluster_name: str,
        credential: Any,
        base_url: str = ARM_ENDPOINT,
        ca_file: str | None = None,
        polling_interval: float = 10.0,
        retry_total: int | None = None,
        retry_backoff_factor: float | None = None,
    ) -> None:
        from azure.mgmt.containerservice.aio import ContainerServiceClient

        self.resource_group = resource_group
        self.cluster_name = cluster_name
        self.base_url = base_url.rstrip("/")
        self.polling_interval = polling_interval
        kw: dict[str, Any] = {}
        if ca_file:
            kw["transport"] = _transport_trusting(ca_file)
        if retry_total is not None:
            kw["retry_total"] = retry_total
        if retry_backoff_factor is not None:
            kw["retry_backoff_factor"] = retry_backoff_factor
        self._client = ContainerServiceClient(
            credential,
            subscription_id,
            base_url=self.base_url,
            polling_interval=polling_interval,
            raw_response_hook=self._observe,
            **kw,
        )
        self._pools = self._client.agent_pools
        self._retrying: dict[str, _Retrying] = {}

    def _observe(self, response: Any) -> None:
        """Every answer, retries included (the hook runs inside the SDK's retry loop):
        count it, and remember a transient one until the pool's next other answer, so
        that `retrying` can say what the SDK is quietly waiting out."""
        request, status = response.http_request, response.http_response.status_code
        operation = _operation(request.method, request.url)
        observe_azure_response(operation, status)
        pool = _pool_of(request.url)
        if pool is None:
            return
        if not _transient(status):
            self._retrying.pop(pool, None)
            return
        note = self._retrying.get(pool)
        if note is not None and note.status == status and note.operation == operation:
            note.answers += 1
            return
        self._retrying[pool] = _Retrying(
            status,
            operation,
            response.http_response.headers.get("Retry-After"),
            datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    def retrying(self, name: str) -> AzureError | None:
        note = self._retrying.get(name)
        if note is None:
            return None
        reason = ErrorReason.THROTTLED if note.status == 429 else ErrorReason.AZURE_SERVER_ERROR
        wait = f", Retry-After {note.retry_after}s" if note.retry_after else ""
        message = (
            f"ARM has answered the {note.operation} request for agent pool {name} with HTTP "
            f"{note.status} since {note.since}{wait}; the Azure SDK keeps retrying it"
        )
        return AzureError(reason, message, status=note.status)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AzureAgentPoolAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get(self, name: str) -> AgentPool | None:
        try:
            pool = await self._pools.get(self.resource_group, self.cluster_name, name)
        except ResourceNotFoundError:
            return None
        except SdkAzureError as e:
            raise classify(e) from e
        return AgentPool.from_arm(pool.as_dict())

    async def list(self) -> list[AgentPool]:
        try:
            return [
                AgentPool.from_arm(p.as_dict())
                async for p in self._pools.list(self.resource_group, self.cluster_name)
            ]
        except SdkAzureError as e:
            raise classify(e) from e

    async def create(
        self, spec: AgentPoolSpec, *, on_started: OnStarted | None = None
    ) -> AgentPool:
        try:
            poller = await self._pools.begin_create_or_update(
                self.resource_group,
                self.cluster_name,
                spec.name,
                SdkAgentPool(spec.to_arm()),
                polling_interval=self.polling_interval,
            )
        except SdkAzureError as e:
            raise classify(e) from e
        if on_started is not None:
            await on_started(poller.continuation_token())
        try:
            result = await poller.result()
        except SdkAzureError as e:
            raise classify(e) from e
        return AgentPool.from_arm(result.as_dict())

    async def resume_create(self, token: str) -> AgentPool:
        if not self.owns_token(token):
            raise AzureError(
                ErrorReason.LAUNCH_FAILED,
                f"refusing a continuation token that does not point at {self.base_url}",
            )
        try:
            poller = await self._pools.begin_create_or_update(
                self.resource_group,
                self.cluster_name,
                "",
                SdkAgentPool({}),  # unused when resuming
                continuation_token=token,
                polling_interval=self.polling_interval,
            )
            result = await poller.result()
        except SdkAzureError as e:
            raise classify(e) from e
        return AgentPool.from_arm(result.as_dict())

    def owns_token(self, token: str) -> bool:
        try:
            data = json.loads(base64.b64decode(token, validate=True))["data"]
            urls = [data["request"]["url"]]
            headers = data["response"]["headers"]
        except (ValueError, KeyError, TypeError):
            return False
        urls += [
            v
            for k, v in headers.items()
            if k.lower() in ("azure-asyncoperation", "location", "operation-location")
        ]
        want = _origin(self.base_url)
        return all(isinstance(u, str) and _origin(u) == want for u in urls)

    async def delete(self, name: str, *, wait: bool = True, reissue: bool = False) -> None:
        pool = await self.get(name)
        if pool is None:
            return
        if pool.provisioning_state == "Deleting" and not reissue:
            if wait:
                await self._wait_gone(name)
            return
        try:
            poller = await self._pools.begin_delete(
                self.resource_group, self.cluster_name, name, polling_interval=self.polling_interval
            )
            if wait:
                await poller.result()
        except ResourceNotFoundError:
            return
        except SdkAzureError as e:
            raise classify(e) from e

    async def _wait_gone(self, name: str) -> None:
        while True:
            if await self.get(name) is None:
                return
            await asyncio.sleep(self.polling_interval)

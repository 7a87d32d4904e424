"""A thin async Kubernetes client over aiohttp, on raw JSON dicts.

Why not kubernetes-asyncio's generated API classes: turning every response into
generated models costs ~40x more CPU than ``json.loads`` (RUNTIME.md), and controllers
here work on dicts (the informer cache holds dicts too). kubernetes-asyncio still does
what it is good at: reading kubeconfig / in-cluster configuration, including token
refresh. This client adds what controllers need on top:

- every verb on typed and custom resources, the status subresource, the four patch
  types (merge, JSON, strategic-merge, server-side apply);
- optimistic concurrency: ``update`` sends the object's resourceVersion and a stale one
  raises `Conflict`;
- 429 (and 5xx carrying Retry-After) retried after the server's Retry-After, up to
  ten times, as client-go does;
- ``rest_client_requests_total{code,method,host}`` counted per request;
- an optional write fence (`Client.set_write_fence`): a leader-elected manager installs
  one so that no write leaves the process once its Lease is lost;
- a streaming ``watch`` that yields raw events line by line.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import orjson
import structlog

from kaito.runtime import metrics
from kaito.runtime.errors import ApiError, WriteFenced
from kaito.runtime.meta import Obj
from kaito.runtime.ratelimit import TokenBucket
from kaito.runtime.resource import Resource

log = structlog.get_logger("kaito.runtime.client")


MAX_RETRIES = 10
"""Retries of a request answered 429 (or 5xx) with Retry-After; client-go uses 10."""

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
"""The methods a write fence stops (every mutating verb, subresources included)."""

MAX_RETRY_AFTER = 30.0
"""The longest Retry-After we honour per attempt (seconds); longer values are clipped."""

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)
"""Per request (not watches): the apiserver itself gives up on non-watch requests at 60 s,
so waiting longer only hides a dead connection."""


class PatchType(enum.StrEnum):
    MERGE = "application/merge-patch+json"
    JSON = "application/json-patch+json"
    STRATEGIC = "application/strategic-merge-patch+json"
    APPLY = "application/apply-patch+yaml"


@dataclass
class ClientConfig:
    """Where the apiserver is and how to authenticate: built from kubeconfig or in-cluster."""

    server: str
    ssl_context: ssl.SSLContext | bool
    token: str | None = None
    user_agent: str = "kaito"
    qps: float = 0.0
    """Client-side rate limit in requests/s; 0 (the default) means unthrottled."""
    burst: int = 0
    """Requests that may go at once before ``qps`` paces them; below 1 counts as 1."""
    _refresh: Any = field(default=None, repr=False)

    @classmethod
    async def from_kubeconfig(
        cls, path: str | None = None, *, context: str | None = None
    ) -> ClientConfig:
        """Load ``path`` (default: $KUBECONFIG or ~/.kube/config) with kubernetes-asyncio."""
        from kubernetes_asyncio import config as kconfig
        from kubernetes_asyncio.client import Configuration

        cfg = Configuration()
        await kconfig.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        return cls._from_configuration(cfg)

    @classmethod
    def in_cluster(cls) -> ClientConfig:
        """The pod's service-account token (re-read as it rotates) and the cluster CA."""
        from kubernetes_asyncio import config as kconfig
        from kubernetes_asyncio.client import Configuration

        cfg = Configuration()
        kconfig.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        return cls._from_configuration(cfg)

    @classmethod
    async def load(cls, path: str | None = None) -> ClientConfig:
        """In-cluster when running in a pod and no kubeconfig is given, else kubeconfig."""
        import os

        if (
            path is None
            and os.environ.get("KUBERNETES_SERVICE_HOST")
            and not os.environ.get("KUBECONFIG")
        ):
            return cls.in_cluster()
        return await cls.from_kubeconfig(path)

    @classmethod
    def _from_configuration(cls, cfg: Any) -> ClientConfig:
        if cfg.verify_ssl:
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        token = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization")
        return cls(server=cfg.host.rstrip("/"), ssl_context=ctx, token=token, _refresh=cfg)


class Client:
    """Async REST client. One per process; share it between controllers.

    Use as ``async with Client(config) as client:`` or call `close()`; the aiohttp
    session (and its connection pool) lives as long as the client.
    """

    def __init__(self, config: ClientConfig, *, pool_size: int = 100) -> None:
        self.config = config
        metrics.register_runtime_metrics()
        self._host = urllib.parse.urlsplit(config.server).netloc
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self._auth_header: str | None = None
        self._auth_checked = 0.0
        self._limiter = (
            TokenBucket(qps=config.qps, burst=max(config.burst, 1)) if config.qps > 0 else None
        )
        self._write_fence: Callable[[], str | None] | None = None

    def set_write_fence(self, fence: Callable[[], str | None]) -> None:
        """Check ``fence()`` right before every write is sent; while it returns a reason
        (not None), raise `WriteFenced` instead of sending.

        The leader-elected `Manager` installs its elector's fence, so that a replica
        whose lease was lost (or is past its renew deadline) writes nothing, whichever of
        its tasks runs first after, say, a long pause. One fence per client: a second
        one is a ValueError (one leader-elected manager per client).
        """
        if self._write_fence is not None:
            raise ValueError("this client already has a write fence (one per client)")
        self._write_fence = fence

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=self.config.ssl_context, limit=self._pool_size, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=REQUEST_TIMEOUT,
                json_serialize=lambda o: orjson.dumps(o).decode(),
                headers={"User-Agent": self.config.user_agent, "Accept": "application/json"},
            )
        return self._session

    async def _headers(self) -> dict[str, str]:
        # Refresh at most every 10 s: in-cluster tokens rotate on the scale of an hour.
        now = time.monotonic()
        if self._auth_header is None or now - self._auth_checked > 10:
            cfg = self.config._refresh
            if cfg is not None:
                token = await cfg.get_api_key_with_prefix("BearerToken")
            else:
                token = self.config.token
            if token and not token.lower().startswith("bearer "):
                token = f"Bearer {token}"
            self._auth_header = token
            self._auth_checked = now
        return {"Authorization": self._auth_header} if self._auth_header else {}

    # -- the request loop ----------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """Send one request, retrying on 429/5xx with Retry-After; return the decoded body."""
        url = self.config.server + path
        data = None if body is None else orjson.dumps(body)
        for attempt in range(MAX_RETRIES + 1):
            if self._limiter is not None:
                await self._limiter.wait()
            headers = await self._headers()
            if data is not None:
                headers["Content-Type"] = content_type
            # Checked after the last await before sending, so a paused process that
            # resumes past its deadline cannot send a write it decided on before.
            if self._write_fence is not None and method in WRITE_METHODS:
                reason = self._write_fence()
                if reason is not None:
                    raise WriteFenced(f"{method} {path} not sent: {reason}")
            async with self.session.request(
                method, url, params=params, data=data, headers=headers
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
            metrics.REST_CLIENT_REQUESTS.labels(str(status), method, self._host).inc()
            if status < 300:
                return orjson.loads(raw) if raw else None
            if (
                retry_after is not None
                and (status == 429 or status >= 500)
                and attempt < MAX_RETRIES
            ):
                log.debug(
                    "server asked to retry",
                    method=method,
                    path=path,
                    status=status,
                    retry_after=retry_after,
                )
                await asyncio.sleep(min(retry_after, MAX_RETRY_AFTER))
                continue
            try:
                decoded = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                decoded = raw.decode(errors="replace")
            raise ApiError.from_response(status, decoded, retry_after)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- verbs ---------------------------------------------------------------------------

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        return cast(Obj, await self.request("GET", res.path(namespace=namespace, name=name)))

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Obj:
        params = _params(
            labelSelector=label_selector,
            fieldSelector=field_selector,
            resourceVersion=resource_version,
            limit=str(limit) if limit else None,
            **{"continue": continue_token},
        )
        return cast(Obj, await self.request("GET", res.path(namespace=namespace), params=params))

    async def list_all(
        self, res: Resource, namespace: str | None = None, **kw: Any
    ) -> builtins.list[Obj]:
        """Every item, following ``continue`` tokens (pages of 500)."""
        items: builtins.list[Obj] = []
        token: str | None = None
        while True:
            page = await self.list(res, namespace, limit=500, continue_token=token, **kw)
            items.extend(page.get("items") or [])
            token = page.get("metadata", {}).get("continue")
            if not token:
                return items

    async def create(
        self,
        res: Resource,
        body: Obj,
        namespace: str | None = None,
        *,
        field_manager: str | None = None,
    ) -> Obj:
        ns = namespace or body.get("metadata", {}).get("namespace")
        params = _params(fieldManager=field_manager)
        return cast(
            Obj,
            await self.request(
                "POST", res.path(namespace=ns), params=params, body=_typed(res, body)
            ),
        )

    async def update(self, res: Resource, body: Obj, *, subresource: str | None = None) -> Obj:
        """PUT the whole object; its metadata.resourceVersion makes this a compare-and-swap."""
        meta = body["metadata"]
        path = res.path(namespace=meta.get("namespace"), name=meta["name"], subresource=subresource)
        return cast(Obj, await self.request("PUT", path, body=_typed(res, body)))

    async def update_status(self, res: Resource, body: Obj) -> Obj:
        return await self.update(res, body, subresource="status")

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: PatchType = PatchType.MERGE,
        subresource: str | None = None,
        field_manager: str | None = None,
        force: bool | None = None,
    ) -> Obj:
        params = _params(fieldManager=field_manager, force="true" if force else None)
        path = res.path(namespace=namespace, name=name, subresource=subresource)
        if patch_type is PatchType.APPLY and isinstance(patch, dict):
            patch = _typed(res, patch)
        return cast(
            Obj,
            await self.request(
                "PATCH", path, params=params, body=patch, content_type=patch_type.value
            ),
        )

    async def apply(
        self,
        res: Resource,
        body: Obj,
        *,
        field_manager: str,
        force: bool = True,
        subresource: str | None = None,
    ) -> Obj:
        """Server-side apply of ``body`` (its metadata names the object)."""
        meta = body["metadata"]
        return await self.patch(
            res,
            meta["name"],
            body,
            meta.get("namespace"),
            patch_type=PatchType.APPLY,
            field_manager=field_manager,
            force=force,
            subresource=subresource,
        )

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: str | None = None,
        preconditions: Mapping[str, str] | None = None,
        grace_period_seconds: int | None = None,
    ) -> Obj | None:
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if propagation_policy:
            body["propagationPolicy"] = propagation_policy
        if preconditions:
            body["preconditions"] = dict(preconditions)
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        return cast(
            "Obj | None",
            await self.request("DELETE", res.path(namespace=namespace, name=name), body=body),
        )

    async def server_version(self) -> Obj:
        return cast(Obj, await self.request("GET", "/version"))

    # -- watch ---------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None,
        timeout_seconds: int,
        allow_bookmarks: bool = True,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> AsyncIterator[WatchStream]:
        """Open a watch; yields a `WatchStream` whose ``next(timeout)`` returns raw events.

        An error answer to the watch request itself (e.g. 410 on a too-old
        resourceVersion, 403) raises `ApiError` before anything is yielded.
        """
        params = _params(
            watch="true",
            resourceVersion=resource_version,
            allowWatchBookmarks="true" if allow_bookmarks else None,
            timeoutSeconds=str(timeout_seconds),
            labelSelector=label_selector,
            fieldSelector=field_selector,
        )
        headers = await self._headers()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        async with self.session.get(
            self.config.server + res.path(namespace=namespace),
            params=params,
            headers=headers,
            timeout=timeout,
        ) as resp:
            metrics.REST_CLIENT_REQUESTS.labels(str(resp.status), "WATCH", self._host).inc()
            if resp.status >= 300:
                raw = await resp.read()
                try:
                    decoded: Any = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    decoded = raw.decode(errors="replace")
                raise ApiError.from_response(
                    resp.status, decoded, _retry_after(resp.headers.get("Retry-After"))
                )
            yield WatchStream(resp.content)


class WatchStream:
    """Newline-delimited watch events from a streaming response, parsed with orjson.

    Splits lines ourselves instead of ``StreamReader.readline`` because objects larger
    than aiohttp's line limit (64 KiB) are legal and common (CRDs, big statuses).
    """

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._buf = bytearray()
        self._lines: list[bytes] = []

    async def next(self, *, inactivity_timeout: float | None) -> Obj | None:
        """The next event, or None when the server closed the stream cleanly.

        Raises `TimeoutError` when no byte arrived for ``inactivity_timeout`` seconds:
        the caller treats the stream as dead and reconnects.
        """
        while not self._lines:
            async with asyncio.timeout(inactivity_timeout):
                chunk = await self._content.readany()
            if not chunk:
                return None
            self._buf.extend(chunk)
            if b"\n" in chunk:
                *complete, rest = self._buf.split(b"\n")
                self._lines = [bytes(line) for line in complete if line.strip()]
                self._lines.reverse()
                self._buf = bytearray(rest)
        return cast(Obj, orjson.loads(self._lines.pop()))


def _typed(res: Resource, body: Obj) -> Obj:
    if "apiVersion" not in body or "kind" not in body:
        body = {"apiVersion": res.api_version, "kind": res.kind, **body}
    return body


def _params(**kw: str | None) -> dict[str, str] | None:
    out = {k: v for k, v in kw.items() if v is not None}
    return out or None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None

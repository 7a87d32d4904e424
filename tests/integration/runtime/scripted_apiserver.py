"""A scripted HTTP server for the faults a real apiserver cannot produce on demand.

Used ONLY for: a watch that goes silent mid-stream, a watch answered 410 Gone, an
ERROR event carrying 410, and 429 with Retry-After. Every other test talks to the real
kube-apiserver. Each request to a path pops the next scripted response for that path
(the last one repeats); every request is recorded with its query parameters.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kaito.runtime.client import Client, ClientConfig

Script = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    at: float


@dataclass
class ScriptedApiserver:
    scripts: dict[tuple[str, str], list[Script]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    def on(self, method: str, path: str, *responses: Script) -> None:
        self.scripts.setdefault((method, path), []).extend(responses)

    def calls(self, method: str, path: str, *, watch: bool | None = None) -> list[Recorded]:
        out = [r for r in self.requests if r.method == method and r.path == path]
        if watch is not None:
            out = [r for r in out if (r.query.get("watch") == "true") == watch]
        return out

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), loop.time())
        )
        is_watch = request.query.get("watch") == "true"
        key = (request.method, request.path + ("?watch" if is_watch else ""))
        queue = self.scripts.get(key)
        if not queue:
            return web.json_response(
                {"kind": "Status", "code": 404, "reason": "NotFound"}, status=404
            )
        script = queue.pop(0) if len(queue) > 1 else queue[0]
        return await script(request)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def client(self) -> Client:
        return Client(
            ClientConfig(server=f"http://127.0.0.1:{self.port}", ssl_context=False, token="t")
        )


# -- building blocks for scripts ---------------------------------------------------------


def configmap(
    name: str, rv: str, data: dict[str, str] | None = None, ns: str = "default"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "uid": f"uid-{name}"},
        "data": data or {},
    }


def list_response(items: list[dict[str, Any]], rv: str) -> Script:
    async def respond(_: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "kind": "ConfigMapList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": rv},
                "items": items,
            }
        )

    return respond


def status(code: int, reason: str, *, retry_after: str | None = None) -> Script:
    async def respond(_: web.Request) -> web.StreamResponse:
        headers = {"Retry-After": retry_after} if retry_after else None
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": f"scripted {code} {reason}",
        }
        return web.json_response(body, status=code, headers=headers)

    return respond


def watch_stream(*events: dict[str, Any], then: str = "close", hold: float = 3600.0) -> Script:
    """Send ``events`` then either close cleanly (``then="close"``) or go silent (``"silent"``)."""

    async def respond(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for ev in events:
            await resp.write(json.dumps(ev).encode() + b"\n")
        if then == "silent":
            await asyncio.sleep(hold)
        return resp

    return respond

"""The manager's two small HTTP servers: ``/metrics``, and ``/healthz`` + ``/readyz``.

Kept apart (two ports, as controller-runtime does) so a NetworkPolicy can open metrics
to Prometheus without opening probes, and so probes stay cheap under scrape load.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = Callable[[], str | None]
"""A health check: returns None when healthy, else the reason it is not."""


def parse_bind(address: str) -> tuple[str, int] | None:
    """``":8080"`` -> ("0.0.0.0", 8080); ``"127.0.0.1:0"`` -> any free port; ``"0"`` -> disabled."""
    if address in ("0", ""):
        return None
    host, _, port = address.rpartition(":")
    return (host or "0.0.0.0", int(port))


class HttpServer:
    def __init__(self, app: web.Application, bind: tuple[str, int]) -> None:
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=5.0
        )
        self._bind = bind
        self.port: int | None = None

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._bind[0], self._bind[1], reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._bind[1]

    async def stop(self) -> None:
        await self._runner.cleanup()


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def handle(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app


def probes_app(healthz: dict[str, Check], readyz: dict[str, Check]) -> web.Application:
    def handler(checks: dict[str, Check]) -> Callable[[web.Request], object]:
        async def handle(request: web.Request) -> web.Response:
            failed = {}
            for name, check in checks.items():
                try:
                    reason = check()
                except Exception as e:  # a crashing check is a failing check
                    reason = f"check raised {type(e).__name__}: {e}"
                if reason is not None:
                    failed[name] = reason
            verbose = "verbose" in request.query
            if failed:
                lines = [f"[-]{n} failed: {r}" for n, r in failed.items()]
                return web.Response(status=503, text="\n".join(lines) + "\n")
            if verbose:
                return web.Response(text="".join(f"[+]{n} ok\n" for n in checks) + "ok\n")
            return web.Response(text="ok")

        return handle

    app = web.Application()
    app.router.add_get("/healthz", handler(healthz))  # type: ignore[arg-type]
    app.router.add_get("/readyz", handler(readyz))  # type: ignore[arg-type]
    return app

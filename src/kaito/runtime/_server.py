"""The manager's two small HTTP applications: ``/metrics``, and ``/healthz`` + ``/readyz``.

Each is served by its own `kaito.runtime.httpserver.HttpServer`: two ports, as
controller-runtime does, so a NetworkPolicy can open metrics to Prometheus without
opening probes, and so probes stay cheap under scrape load.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = Callable[[], str | None]
"""A health check: returns None when healthy, else the reason it is not."""


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

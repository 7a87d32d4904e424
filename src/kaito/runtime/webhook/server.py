"""The webhook server: admission handlers by path, over HTTPS, instrumented.

As controller-runtime's ``webhook.Server``: ``register(path, handler)`` then start. The
apiserver calls webhooks over TLS only, so a certificate directory is required; the
pair in it is served through a `CertWatcher`, so a rotated certificate (a re-mounted
Secret, a rewritten file) is served from the next handshake on without a restart.

Each request is decoded into an `AdmissionRequest`, given to its handler, and the
answer encoded with the request's uid. A body that is no AdmissionReview gets HTTP 400;
a handler that raises denies the request with code 500 (``admission.Errored``) and the
server keeps serving. Every request is counted in controller-runtime's webhook metrics.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from kaito.runtime import metrics
from kaito.runtime.certwatcher import CertWatcher
from kaito.runtime.httpserver import HttpServer, parse_bind
from kaito.runtime.webhook.admission import (
    Handler,
    MalformedReview,
    decode_review,
    encode_review,
    errored,
)
from kaito.runtime.webhook.metrics import webhook_metrics

__all__ = ["Server", "ServerOptions"]

log = structlog.get_logger("kaito.runtime.webhook")

DEFAULT_PORT = 9443


@dataclass
class ServerOptions:
    cert_dir: Path
    """Directory holding the serving certificate and key (PEM); watched for changes."""
    bind_address: str = f":{DEFAULT_PORT}"
    """Where to listen; default ":9443" (port 0: a free port, see `Server.port`)."""
    cert_name: str = "tls.crt"
    key_name: str = "tls.key"
    cert_poll_interval: float = 10.0
    """Seconds between checks of the certificate files; default 10."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest AdmissionReview accepted; default 8 MiB (objects can carry big specs)."""


class Server:
    """Serves registered admission handlers; ``async with Server(opts)`` or start()/stop()."""

    def __init__(
        self, options: ServerOptions, *, registry: CollectorRegistry = metrics.REGISTRY
    ) -> None:
        self.options = options
        self._handlers: dict[str, Handler] = {}
        self._metrics = webhook_metrics(registry)
        self._http: HttpServer | None = None

    def register(self, path: str, handler: Handler) -> None:
        """Serve ``handler`` at ``path`` (before `start`)."""
        if self._http is not None:
            raise RuntimeError("register webhooks before starting the server")
        if path in self._handlers:
            raise ValueError(f"a webhook is already registered at {path}")
        self._handlers[path] = handler

    @property
    def port(self) -> int | None:
        """The bound port once started; None before."""
        return self._http.port if self._http is not None else None

    def started_check(self) -> str | None:
        """For a readiness check: None while serving, else why not."""
        if self._http is None or not self._http.started:
            return "webhook server not started"
        return None

    async def start(self) -> None:
        opts = self.options
        bind = parse_bind(opts.bind_address)
        if bind is None:
            raise ValueError(f"the webhook server needs an address, not {opts.bind_address!r}")
        watcher = CertWatcher(
            opts.cert_dir / opts.cert_name,
            opts.cert_dir / opts.key_name,
            poll_interval=opts.cert_poll_interval,
        )
        app = web.Application(client_max_size=opts.max_body_bytes)
        for path, handler in self._handlers.items():
            app.router.add_post(path, self._endpoint(path, handler))
        http = HttpServer(app, host=bind[0], port=bind[1], tls=watcher, name="webhook")
        await http.start()
        self._http = http
        log.info("webhook serving", address=f"{bind[0]}:{http.port}", paths=list(self._handlers))

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _endpoint(
        self, path: str, handler: Handler
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        requests = self._metrics.requests
        in_flight = self._metrics.in_flight.labels(path)
        latency = self._metrics.latency.labels(path)

        async def serve(request: web.Request) -> web.Response:
            started = time.perf_counter()
            in_flight.inc()
            code = 200
            try:
                try:
                    review = decode_review(await request.read())
                except MalformedReview as e:
                    code = 400
                    return web.Response(status=400, text=str(e))
                try:
                    answer = await handler.handle(review)
                except Exception as e:  # a handler bug: deny, say why, keep serving
                    log.exception("webhook handler failed", webhook=path, uid=review.uid)
                    answer = errored(500, e)
                return web.Response(
                    body=orjson.dumps(encode_review(review.uid, answer)),
                    content_type="application/json",
                )
            finally:
                in_flight.dec()
                requests.labels(str(code), path).inc()
                latency.observe(time.perf_counter() - started)

        return serve

"""The runtime's one HTTP server: an aiohttp application on one address, TLS optional.

The manager's metrics and probe endpoints, the admission webhook and the AKS emulator
all serve through it, so binding, port discovery, TLS and certificate reload are done
once. Port 0 binds a free port and `port` says which (tests run many servers at once).

TLS is either a fixed `ssl.SSLContext` or a `CertWatcher`: with a watcher the server
also owns the task that polls the certificate files, so a rotated certificate is served
from the next handshake on without a restart.
"""

from __future__ import annotations

import asyncio
import ssl

import structlog
from aiohttp import web

from kaito.runtime.certwatcher import CertWatcher

__all__ = ["HttpServer", "parse_bind"]

log = structlog.get_logger("kaito.runtime.httpserver")


def parse_bind(address: str) -> tuple[str, int] | None:
    """``":8080"`` -> ("0.0.0.0", 8080); ``"127.0.0.1:0"`` -> any free port; ``"0"`` -> disabled."""
    if address in ("0", ""):
        return None
    host, _, port = address.rpartition(":")
    return (host or "0.0.0.0", int(port))


class HttpServer:
    """Serve ``app`` on ``host:port``; ``async with HttpServer(...)`` or start()/stop().

    Args:
        app: the aiohttp application (routes, middlewares, body size limit).
        host, port: where to listen; port 0 picks a free port (see `port`).
        tls: None (plain HTTP, the default), a fixed context, or a `CertWatcher`.
        name: for logs.
        shutdown_timeout: seconds in-flight requests get on `stop`; default 5.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        tls: ssl.SSLContext | CertWatcher | None = None,
        name: str = "http",
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.host, self.name, self.tls = host, name, tls
        self._requested_port = port
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout
        )
        self._watch: asyncio.Task[None] | None = None
        self._serving = False
        self.port: int | None = None
        """The bound port once started (the free one chosen for port 0); None before."""

    @property
    def url(self) -> str:
        """``scheme://host:port`` of the started server (loopback when bound to all)."""
        scheme = "https" if self.tls is not None else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def started(self) -> bool:
        """Listening: `start` returned and `stop` has not been called."""
        return self._serving

    async def start(self) -> None:
        context = self.tls.ssl_context if isinstance(self.tls, CertWatcher) else self.tls
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self._requested_port, ssl_context=context, reuse_address=True
        )
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        # AppRunner.addresses: the sockets' names, the bound port included.
        self.port = int(self._runner.addresses[0][1])
        self._serving = True
        if isinstance(self.tls, CertWatcher):
            self._watch = asyncio.create_task(self.tls.watch(), name=f"{self.name} certwatcher")
        log.debug("http server listening", server=self.name, url=self.url)

    async def stop(self) -> None:
        """Close the listener, give in-flight requests ``shutdown_timeout``, stop watching."""
        self._serving = False
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.wait([self._watch])
            self._watch = None
        await self._runner.cleanup()

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

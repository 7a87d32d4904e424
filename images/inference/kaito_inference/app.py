"""Process entry point: logging, signals, listening first, then loading the engine.

The HTTP port opens before the model loads so that probes see 503 ("loading") rather
than connection refused; SIGTERM and SIGINT stop accepting, finish the shutdown of the
engine (its worker processes included) and exit.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import time
from collections.abc import Sequence

import structlog
from aiohttp import web

from . import logs
from .config import ConfigError, Settings, parse_settings
from .emulated_gpu import adapt_for_emulated_gpu
from .engines import create_engine
from .server import Server

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT_S = 30.0


async def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code."""
    engine = create_engine(settings)
    server = Server(settings, engine)
    runner = web.AppRunner(
        server.app(),
        handler_cancellation=True,  # a client disconnect cancels its handler: abort
        auto_decompress=False,  # Content-Encoding is decoded by the server (decode_body)
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    log.info(
        "listening",
        host=settings.host,
        port=settings.port,
        engine=settings.engine,
        event_loop=type(asyncio.get_running_loop()).__module__,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        start = asyncio.ensure_future(engine.start())
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({start, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if start in done:
            try:
                info = start.result()
                _freeze_startup_heap()
                server.mark_ready(info)
            except Exception as exc:
                server.startup_error = repr(exc)
                log.exception("engine failed to start", engine=settings.engine)
                code = 1
                stop.set()
            await stopping
        else:
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
        log.info("shutting down")
    finally:
        await runner.cleanup()
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                await engine.stop()
        except Exception:
            log.exception("engine shutdown failed")
    log.info("stopped", code=code)
    return code


def _freeze_startup_heap() -> None:
    """Exempt everything loaded at start-up from garbage collection.

    torch, transformers and vLLM leave millions of long-lived objects on the heap; a
    full collection walking them stalls the event loop for hundreds of milliseconds
    under load (every stream waits). vLLM's own server freezes its heap the same way.
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "startup heap frozen",
        objects=gc.get_freeze_count(),
        seconds=round(time.perf_counter() - started, 3),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    # Model weights are local (a volume); progress bars would only pollute JSON logs.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logs.configure()
    try:
        settings = parse_settings(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    try:
        settings, _ = adapt_for_emulated_gpu(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(serve(settings))

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
import threading
import time
from collections.abc import Sequence

import structlog
from aiohttp import web

from . import logs
from .config import ConfigError, Settings, parse_settings
from .emulated_gpu import adapt_for_emulated_gpu
from .engines import create_engine
from .group import (
    BOOT_ID,
    JOINED,
    JOINING,
    WAITING,
    WORKERS_EXITED,
    Group,
    GroupWatch,
    make_group,
    write_termination_message,
)
from .server import Server
from .threads import end_children, in_daemon_thread

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT_S = 30.0


async def serve(settings: Settings, group: Group | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code. In a multi-node group
    this is rank 0: it also watches the other ranks and stops when one is lost
    (`kaito_inference.group`)."""
    stop = asyncio.Event()
    engine = create_engine(settings, group)
    watch = GroupWatch(group=group, on_lost=stop.set) if group is not None else None
    server = Server(settings, engine, group=watch)
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

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    watching = asyncio.ensure_future(watch.run(stop)) if watch is not None else None
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
        if watch is not None and watch.lost:
            code = 1  # the group broke: kubelet restarts the container, and says why
        log.info("shutting down", reason=watch.lost if watch is not None else None)
    finally:
        stop.set()
        if watching is not None:
            await asyncio.gather(watching, return_exceptions=True)
        await runner.cleanup()
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                await engine.stop()
        except Exception:
            log.exception("engine shutdown failed")
        end_children()  # vLLM's engine core, when its start was abandoned
    log.info("stopped", code=code)
    return code


async def serve_group_worker(settings: Settings, group: Group) -> int:
    """Rank > 0: run this node's share of the model until rank 0 is lost or SIGTERM.

    vLLM's workers start only once this rank is bound to a rank 0 process that is
    loading (`kaito_inference.group`). The HTTP port answers ``/health`` (``waiting``,
    ``joining``, ``joined``) for rank 0 and the probes; every other path is refused,
    since rank 0 serves the API.
    """
    from .engines.vllm_engine import VLLMEngine

    engine = create_engine(settings, group)
    assert isinstance(engine, VLLMEngine), "only vLLM runs in a group (create_engine)"
    stop = asyncio.Event()
    bound = asyncio.Event()
    watch = GroupWatch(group=group, on_lost=stop.set, on_bound=bound.set)
    joined = threading.Event()

    async def health(request: web.Request) -> web.Response:
        body: dict[str, object] = {"rank": group.rank, "boot": BOOT_ID, "head": watch.head_boot}
        if watch.lost:
            body.update(status="unhealthy", error=watch.lost)
            return web.json_response(body, status=503)
        if joined.is_set():
            return web.json_response({**body, "status": JOINED})
        if watch.head_boot is None:
            body["waiting_for"] = watch.waiting_for()
            return web.json_response({**body, "status": WAITING}, status=503)
        return web.json_response({**body, "status": JOINING}, status=503)

    async def refuse(request: web.Request) -> web.Response:
        message = (
            f"this is rank {group.rank} of a {group.size}-node group; rank 0 "
            f"({group.hosts[0]}) serves the API"
        )
        return web.json_response(
            {"error": {"message": message, "type": "group_worker", "param": None, "code": 503}},
            status=503,
        )

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/healthz", health)
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info("group worker listening", rank=group.rank, head=group.hosts[0], port=settings.port)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watching = asyncio.ensure_future(watch.run(stop))
    stopping = asyncio.ensure_future(stop.wait())
    code = 0
    binding = asyncio.ensure_future(bound.wait())
    await asyncio.wait({binding, stopping}, return_when=asyncio.FIRST_COMPLETED)
    binding.cancel()
    if not stop.is_set():
        log.info("bound to rank 0", rank=group.rank, head=group.hosts[0], head_boot=watch.head_boot)
        work = asyncio.ensure_future(
            in_daemon_thread(lambda: engine.run_group_worker(joined), name="vllm-group-worker")
        )
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            error = work.exception()
            log.error("group workers exited", rank=group.rank, error=repr(error))
            write_termination_message(f"{WORKERS_EXITED}: rank {group.rank}: {error}")
            code = 1
        else:
            work.cancel()  # its thread ends with the executor (below) or is abandoned
            await asyncio.gather(work, return_exceptions=True)
    if watch.lost:
        log.error("group head lost; exiting so the pod restarts and rejoins", reason=watch.lost)
        code = 1
    stop.set()
    await asyncio.gather(watching, stopping, binding, return_exceptions=True)
    await runner.cleanup()
    try:
        async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
            await engine.stop()
    except Exception:
        log.exception("group worker shutdown failed")
    end_children()  # vLLM's workers, when it was still joining
    log.info("stopped", code=code, rank=group.rank)
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
        group = make_group(
            settings.group_hosts, settings.group_rank, settings.group_port, settings.port
        )
        if group is not None and settings.engine != "vllm":
            create_engine(settings, group)  # raises the engine's reason
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if group is not None and not group.is_head:
        return asyncio.run(serve_group_worker(settings, group))
    return asyncio.run(serve(settings, group))

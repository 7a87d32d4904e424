"""``make bench-runtime``: kaito.runtime vs kopf on the same Foo -> Deployment controller.

One run, one local control plane, both frameworks side by side. Each controller runs in
its own process (so its CPU time is read from /proc/<pid>/stat) and watches its own
fresh namespace. Modes:

- burst: N Foos created as fast as the apiserver takes them (N = 100, 1000): throughput
  (Foos fully reconciled per second, creation start to the last status seen) and
  controller CPU milliseconds per Foo.
- update: every Foo of the burst patched at once: latency to the status reflecting it.
- paced: 20 Foos/s: create-to-reconciled latency p50/p95/p99.

Plus the controller's peak RSS, the work queue's add/get/done cycles per second, and
cache memory per object against the object's JSON size. Prints a Markdown table
(and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import contextlib

from foo_common import CRD, GROUP, KIND, PLURAL, VERSION

from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.errors import NotFound
from kaito.runtime.informer import Informer
from kaito.runtime.resource import CUSTOMRESOURCEDEFINITIONS, NAMESPACES, Resource
from kaito_dev.controlplane import ControlPlane, free_port

FOOS = Resource(GROUP, VERSION, PLURAL, KIND)
CLK_TCK = os.sysconf("SC_CLK_TCK")
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[bench-runtime {time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


@dataclass
class Row:
    framework: str
    mode: str
    n: int
    throughput: float = float("nan")
    cpu_ms: float = float("nan")
    p50: float = float("nan")
    p95: float = float("nan")
    p99: float = float("nan")
    rss: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


class StatusWatcher:
    """Watches Foos in a namespace and notes when each one's status reflects its generation."""

    def __init__(self, client: Client, namespace: str) -> None:
        self.informer = Informer(client, FOOS, namespace=namespace, resync_period=0)
        self.done_at: dict[tuple[str, int], float] = {}
        self.informer.add_handler(self)
        self._task: asyncio.Task[None] | None = None

    def _see(self, obj: dict[str, Any]) -> None:
        gen = obj["metadata"].get("generation")
        status = obj.get("status") or {}
        if status.get("observedGeneration") == gen and status.get("replicas") == obj.get(
            "spec", {}
        ).get("replicas"):
            self.done_at.setdefault((obj["metadata"]["name"], gen), time.monotonic())

    def on_add(self, obj: dict[str, Any]) -> None:
        self._see(obj)

    def on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self._see(new)

    def on_delete(self, obj: dict[str, Any]) -> None:
        pass

    async def __aenter__(self) -> StatusWatcher:
        self._task = asyncio.create_task(self.informer.run())
        await self.informer.wait_for_sync(30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def wait(
        self, keys: list[tuple[str, int]], timeout: float, ctrl: ControllerProcess
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not all(k in self.done_at for k in keys):
                    await asyncio.sleep(0.01)
        except TimeoutError:
            missing = sum(k not in self.done_at for k in keys)
            tail = ctrl.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"{ctrl.framework}: {missing} Foos not reconciled in {timeout}s; log:\n{tail}"
            ) from None


def foo(name: str, replicas: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    }


class ControllerProcess:
    def __init__(self, framework: str, kubeconfig: str, namespace: str, log_dir: Path) -> None:
        self.framework, self.kubeconfig, self.namespace = framework, kubeconfig, namespace
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_dir / f"{framework}-{namespace}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "PYTHONPATH": str(HERE),
            "OMP_NUM_THREADS": "1",
        }
        if self.framework == "kaito":
            argv = [
                sys.executable,
                str(HERE / "foo_controller_kaito.py"),
                self.kubeconfig,
                self.namespace,
                str(self.port),
                str(self.metrics_port),
            ]
        else:
            argv = [
                sys.executable,
                "-m",
                "kopf",
                "run",
                "--standalone",
                "--quiet",
                "--namespace",
                self.namespace,
                "--liveness",
                f"http://127.0.0.1:{self.port}/healthz",
                str(HERE / "foo_controller_kopf.py"),
            ]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    async def wait_ready(self, client: Client) -> None:
        import aiohttp

        path = "/readyz" if self.framework == "kaito" else "/healthz"
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.framework} exited: {self.log_path.read_text()[-2000:]}"
                    )
                try:
                    async with s.get(f"http://127.0.0.1:{self.port}{path}") as r:
                        if r.status == 200:
                            await asyncio.sleep(
                                0.5
                            )  # kopf answers before its watch streams are open
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.framework} not ready: {self.log_path.read_text()[-2000:]}")

    async def api_writes(self) -> float:
        """Writes (POST/PUT/PATCH/DELETE) this controller sent, from its own metrics (kaito only)."""
        import aiohttp
        from prometheus_client.parser import text_string_to_metric_families

        if self.framework != "kaito":
            return float("nan")
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r,
        ):
            text = await r.text()
        return sum(
            sample.value
            for fam in text_string_to_metric_families(text)
            if fam.name == "rest_client_requests"
            for sample in fam.samples
            if sample.labels.get("method") in ("POST", "PUT", "PATCH", "DELETE")
        )

    def stop(self) -> float:
        assert self.proc is not None
        rss = peak_rss_mib(self.proc.pid) if self.proc.poll() is None else float("nan")
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return rss


async def fresh_namespace(client: Client, prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    return ns


async def delete_namespace(client: Client, ns: str) -> None:
    """Delete and wait until gone, so the next run does not share the CPU with the GC."""
    await client.delete(NAMESPACES, ns)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            await client.get(NAMESPACES, ns)
        except NotFound:
            return
        await asyncio.sleep(0.5)


async def create_all(
    client: Client, ns: str, names: list[str], *, concurrency: int = 32
) -> dict[str, float]:
    sent: dict[str, float] = {}
    sem = asyncio.Semaphore(concurrency)

    async def one(name: str) -> None:
        async with sem:
            sent[name] = time.monotonic()
            await client.create(FOOS, foo(name), ns)

    await asyncio.gather(*(one(n) for n in names))
    return sent


async def run_burst(
    client: Client, kubeconfig: str, framework: str, n: int, log_dir: Path
) -> tuple[Row, Row]:
    ns = await fresh_namespace(client, f"b{n}-{framework}")
    ctrl = ControllerProcess(framework, kubeconfig, ns, log_dir)
    ctrl.start()
    try:
        await ctrl.wait_ready(client)
        assert ctrl.proc is not None
        async with StatusWatcher(client, ns) as watcher:
            names = [f"foo-{i:05d}" for i in range(n)]
            cpu0 = cpu_seconds(ctrl.proc.pid)
            w0 = await ctrl.api_writes()
            t0 = time.monotonic()
            await create_all(client, ns, names)
            await watcher.wait([(name, 1) for name in names], 180, ctrl)
            t1 = max(watcher.done_at[(name, 1)] for name in names)
            cpu1 = cpu_seconds(ctrl.proc.pid)
            burst = Row(
                framework, "burst", n, throughput=n / (t1 - t0), cpu_ms=(cpu1 - cpu0) / n * 1000
            )
            burst.extra["writes_per_foo"] = (await ctrl.api_writes() - w0) / n

            # update: patch every Foo's spec at once; latency to the status catching up
            sent: dict[str, float] = {}
            sem = asyncio.Semaphore(32)

            async def bump(name: str) -> None:
                async with sem:
                    sent[name] = time.monotonic()
                    await client.patch(FOOS, name, {"spec": {"replicas": 1}}, ns)

            cpu0 = cpu_seconds(ctrl.proc.pid)
            u0 = time.monotonic()
            await asyncio.gather(*(bump(name) for name in names))
            await watcher.wait([(name, 2) for name in names], 180, ctrl)
            u1 = max(watcher.done_at[(name, 2)] for name in names)
            cpu1 = cpu_seconds(ctrl.proc.pid)
            lat = [(watcher.done_at[(name, 2)] - sent[name]) * 1000 for name in names]
            update = Row(
                framework,
                "update",
                n,
                throughput=n / (u1 - u0),
                cpu_ms=(cpu1 - cpu0) / n * 1000,
                p50=pct(lat, 50),
                p95=pct(lat, 95),
                p99=pct(lat, 99),
            )
    finally:
        rss = ctrl.stop()
    burst.rss = update.rss = rss
    await delete_namespace(client, ns)
    return burst, update


async def run_paced(
    client: Client, kubeconfig: str, framework: str, rate: float, seconds: float, log_dir: Path
) -> Row:
    ns = await fresh_namespace(client, f"paced-{framework}")
    ctrl = ControllerProcess(framework, kubeconfig, ns, log_dir)
    ctrl.start()
    n = int(rate * seconds)
    try:
        await ctrl.wait_ready(client)
        assert ctrl.proc is not None
        async with StatusWatcher(client, ns) as watcher:
            names = [f"foo-{i:05d}" for i in range(n)]
            sent: dict[str, float] = {}
            cpu0 = cpu_seconds(ctrl.proc.pid)
            start = time.monotonic()
            tasks = []
            for i, name in enumerate(names):
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                sent[name] = time.monotonic()
                tasks.append(asyncio.create_task(client.create(FOOS, foo(name), ns)))
            await asyncio.gather(*tasks)
            await watcher.wait([(name, 1) for name in names], 120, ctrl)
            cpu1 = cpu_seconds(ctrl.proc.pid)
            lat = [(watcher.done_at[(name, 1)] - sent[name]) * 1000 for name in names]
    finally:
        rss = ctrl.stop()
    await delete_namespace(client, ns)
    return Row(
        framework,
        f"paced {rate:g}/s",
        n,
        cpu_ms=(cpu1 - cpu0) / n * 1000,
        p50=pct(lat, 50),
        p95=pct(lat, 95),
        p99=pct(lat, 99),
        rss=rss,
    )


async def cache_memory(client: Client, n: int) -> dict[str, float]:
    """Bytes a cached Foo costs, against its JSON size as served and as cached."""
    ns = await fresh_namespace(client, "mem")
    await create_all(client, ns, [f"foo-{i:05d}" for i in range(n)])
    raw = await client.list(FOOS, ns)
    json_full = sum(len(orjson.dumps(i)) for i in raw["items"]) / n
    inf = Informer(client, FOOS, namespace=ns, resync_period=0)
    task = asyncio.create_task(inf.run())
    await inf.wait_for_sync(60)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    json_cached = sum(len(orjson.dumps(o)) for o in inf.cache.list(ns)) / n
    # Everything the cache retains: the objects (deep) plus the index structures.
    per_obj = (_deep_size(inf.cache._items) + _deep_size(inf.cache._indices)) / n
    await delete_namespace(client, ns)
    return {"json_full": json_full, "json_cached": json_cached, "bytes_per_obj": per_obj}


def _deep_size(o: Any, seen: set[int] | None = None) -> int:
    seen = seen if seen is not None else set()
    if id(o) in seen:
        return 0
    seen.add(id(o))
    size = sys.getsizeof(o)
    if isinstance(o, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in o.items())
    elif isinstance(o, list | tuple | set):
        size += sum(_deep_size(v, seen) for v in o)
    return size


async def queue_cycles() -> float:
    """Best of three runs of the uncontended hot path, metrics on (as controllers run it)."""
    from bench_queue import cycles_per_second

    from kaito.runtime.metrics import QueueMetrics

    return max(
        [await cycles_per_second(300_000, metrics=QueueMetrics(registry=None)) for _ in range(3)]
    )


def fmt(v: float, digits: int = 1) -> str:
    return "–" if v != v else f"{v:.{digits}f}"


async def main() -> None:
    from kaito.runtime import log as runtime_log

    runtime_log.configure(json=False, level="warning")
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--paced-rate", type=float, default=20.0)
    ap.add_argument("--paced-seconds", type=float, default=15.0)
    ap.add_argument(
        "--frameworks",
        default="kaito,kopf,kopf-defaults",
        help="kopf: Event posting off (same API writes as kaito); kopf-defaults: kopf as shipped",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    frameworks = args.frameworks.split(",")

    work = Path(tempfile.mkdtemp(prefix="kaito-bench-"))
    reuse = os.environ.get("KAITO_BENCH_KUBECONFIG")
    plane = None
    if reuse:
        kubeconfig = reuse
    else:
        say("starting a local control plane")
        plane = ControlPlane(work / "cp")
        kubeconfig = plane.start(progress=say).kubeconfig
    rows: list[Row] = []
    try:
        async with Client(await ClientConfig.from_kubeconfig(kubeconfig)) as client:
            with contextlib.suppress(Exception):
                await client.create(CUSTOMRESOURCEDEFINITIONS, CRD)
            for _ in range(100):
                try:
                    await client.list(FOOS, "default")
                    break
                except NotFound:
                    await asyncio.sleep(0.1)
            for n in sizes:
                for fw in frameworks:
                    say(f"burst N={n}: {fw}")
                    burst, update = await run_burst(client, kubeconfig, fw, n, work)
                    rows += [burst, update]
                    say(
                        f"  {fw}: {burst.throughput:.1f} Foos/s, {burst.cpu_ms:.2f} ms CPU/Foo, "
                        f"{burst.extra['writes_per_foo']:.2f} writes/Foo, update p99 {update.p99:.0f} ms"
                    )
            for fw in frameworks:
                say(f"paced {args.paced_rate:g}/s for {args.paced_seconds:g}s: {fw}")
                row = await run_paced(
                    client, kubeconfig, fw, args.paced_rate, args.paced_seconds, work
                )
                rows.append(row)
                say(f"  {fw}: p50 {row.p50:.1f} ms, p99 {row.p99:.1f} ms")
            say("cache memory per object (1000 Foos)")
            mem = await cache_memory(client, 1000)
    finally:
        if plane is not None:
            plane.stop()
        shutil.rmtree(work, ignore_errors=True)
    say("queue add/get/done cycles")
    cycles = await queue_cycles()

    lines = [
        f"Measured {dt.date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, kube-apiserver v1.20.2 (local), "
        "one run, both frameworks side by side (`make bench-runtime`).",
        "",
        "| framework | mode | N | throughput (Foos/s) | controller CPU (ms/Foo) | latency p50 / p95 / p99 (ms) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = "–" if r.p50 != r.p50 else f"{r.p50:.0f} / {r.p95:.0f} / {r.p99:.0f}"
        lines.append(
            f"| {r.framework} | {r.mode} | {r.n} | {fmt(r.throughput)} | {fmt(r.cpu_ms, 2)} | {lat} | {fmt(r.rss, 0)} |"
        )
    by = {(r.framework, r.mode, r.n): r for r in rows}
    lines.append("")
    for n in sizes:
        k = by.get(("kaito", "burst", n))
        for peer in ("kopf", "kopf-defaults"):
            p = by.get((peer, "burst", n))
            if k and p:
                lines.append(
                    f"- burst N={n}: kaito/{peer} throughput **{k.throughput / p.throughput:.2f}x**, "
                    f"CPU per Foo **{k.cpu_ms / p.cpu_ms:.2f}x** ({k.cpu_ms:.2f} vs {p.cpu_ms:.2f} ms)"
                )
        if k:
            lines.append(f"- burst N={n}: kaito API writes per Foo {k.extra['writes_per_foo']:.2f}")
    lines.append(f"- work queue: **{cycles / 1000:.0f}k** add/get/done cycles/s")
    lines.append(
        f"- cache: {mem['bytes_per_obj']:.0f} B per cached Foo vs {mem['json_cached']:.0f} B of JSON as cached "
        f"(managedFields stripped; {mem['json_full']:.0f} B as served): "
        f"**{mem['bytes_per_obj'] / mem['json_cached']:.2f}x** / **{mem['bytes_per_obj'] / mem['json_full']:.2f}x**"
    )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    asyncio.run(main())

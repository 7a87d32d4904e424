"""A real Prometheus for tests: scrape our processes and ask it what it saw.

The binary is Debian's (``hack/prometheus.sh`` downloads and unpacks the package into
the kaito cache once per machine, nothing is installed). A test that needs it and cannot
get it FAILS with the reason: there is no skip path.

    with start_prometheus({"inference": ["127.0.0.1:5000"]}, tmp_path) as prom:
        series = prom.wait_for_series('{__name__=~"vllm:.*", job="inference"}')
        # or, from async code that must not block its event loop:
        series = await prom.wait_for_series_async('kaito_workspace_count')

Each call starts its own server on a free loopback port, with its own storage under
``tmp_dir`` and a scrape interval of 1 s; leaving the ``with`` block stops it (SIGTERM,
then SIGKILL), so no process outlives the test. `Prometheus.query` is an instant query
through ``/api/v1/query``; its result is the API's ``data.result`` list, one dict per
series: ``{"metric": {"__name__": ..., "job": ..., ...}, "value": [ts, "1"]}``.
Prometheus applies a new target list about 5 s after it starts, so the first series
arrive after ~6 s; the default timeouts allow for that.

- `start_prometheus`: static jobs from ``{job: ["host:port", ...]}`` (`scrape_config`).
- `run_prometheus`: any configuration, as a dict (see test_monitoring_scrape_config.py).
- `promtool_binary`: ``promtool`` from the same package, for ``promtool check config``.

Debian's build has no Kubernetes service discovery: ``kubernetes_sd_configs`` is
rejected; `tests.integration.kubernetes_sd` stands in for it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito_dev.controlplane import free_port

__all__ = [
    "Prometheus",
    "PrometheusError",
    "prometheus_binary",
    "promtool_binary",
    "run_prometheus",
    "scrape_config",
    "start_prometheus",
]

ROOT = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = ROOT / "hack" / "prometheus.sh"

Series = dict[str, Any]


class PrometheusError(RuntimeError):
    """The HTTP API answered with an error (a bad PromQL expression, say)."""


@cache
def prometheus_binary() -> Path:
    """The ``prometheus`` binary from ``hack/prometheus.sh`` (cached); pytest.fail if none."""
    try:
        proc = subprocess.run(
            [str(FETCH_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"hack/prometheus.sh could not run: {e}", pytrace=False)
    lines = proc.stdout.strip().splitlines()
    binary = Path(lines[-1]) if lines else None
    if proc.returncode != 0 or binary is None or not binary.is_file():
        pytest.fail(
            f"Prometheus could not be obtained (hack/prometheus.sh exited {proc.returncode}):\n"
            f"{proc.stderr[-3000:]}",
            pytrace=False,
        )
    return binary


def promtool_binary() -> Path:
    """``promtool``, which the same Debian package ships beside ``prometheus``."""
    return prometheus_binary().with_name("promtool")


def scrape_config(
    targets: Mapping[str, Sequence[str]],
    *,
    scrape_interval: str = "1s",
    scheme: str = "http",
    metrics_path: str = "/metrics",
    ca_file: str | None = None,
    insecure_skip_verify: bool = False,
) -> dict[str, Any]:
    """A Prometheus configuration with one static job per ``targets`` entry.

    ``targets`` maps a job name (the ``job`` label of every series it yields) to
    ``host:port`` addresses. ``scheme``, ``metrics_path`` and the TLS options apply to
    every job.
    """
    jobs = []
    for job, addresses in targets.items():
        cfg: dict[str, Any] = {
            "job_name": job,
            "scheme": scheme,
            "metrics_path": metrics_path,
            "static_configs": [{"targets": list(addresses)}],
        }
        if scheme == "https":
            tls: dict[str, Any] = {"insecure_skip_verify": insecure_skip_verify}
            if ca_file:
                tls["ca_file"] = ca_file
            cfg["tls_config"] = tls
        jobs.append(cfg)
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "scrape_configs": jobs,
    }


@dataclass
class Prometheus:
    """A running Prometheus server (see `start_prometheus`)."""

    url: str
    config_file: Path
    log_file: Path
    process: subprocess.Popen[bytes]
    _log: Any = field(default=None, repr=False)

    # -- the HTTP API ---------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` member of a successful answer."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400/422: the answer says why
            try:
                body = json.loads(e.read())
            except ValueError:
                raise PrometheusError(f"GET {url}: HTTP {e.code}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[Series]:
        """An instant query; one dict per series (``metric`` labels and ``value``)."""
        data = self.api("query", query=promql)
        result = data["result"]
        if data.get("resultType") in ("vector", "matrix"):
            return list(result)
        return [{"metric": {}, "value": result}]  # a scalar or a string

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and last error (for messages)."""
        return list(self.api("targets")["activeTargets"])

    def wait_for_series(
        self, promql: str, timeout: float = 30.0, *, min_count: int = 1, interval: float = 0.25
    ) -> list[Series]:
        """Query every ``interval`` s until the answer has ``min_count`` series; that answer.

        Targets are scraped at different moments: to see several jobs, ask for as many
        series (``count by (job) (...)`` with ``min_count=2``, say). On timeout the
        assertion error names each target's health and last scrape error.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if len(result) >= min_count:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(self._no_series(promql, timeout))
            self._check_running()
            time.sleep(interval)

    async def query_async(self, promql: str) -> list[Series]:
        """`query` in a worker thread, for async tests with servers on their event loop."""
        return await asyncio.to_thread(self.query, promql)

    async def wait_for_series_async(
        self, promql: str, timeout: float = 30.0, *, min_count: int = 1, interval: float = 0.25
    ) -> list[Series]:
        """`wait_for_series` without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while True:
            result = await self.query_async(promql)
            if len(result) >= min_count:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(await asyncio.to_thread(self._no_series, promql, timeout))
            self._check_running()
            await asyncio.sleep(interval)

    # -- the process ----------------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; idempotent."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def _no_series(self, promql: str, timeout: float) -> str:
        lines = [f"too few series for {promql!r} after {timeout}s; targets:"]
        try:
            for t in self.targets():
                job = t.get("labels", {}).get("job") or t.get("scrapePool")
                err = t.get("lastError") or "-"
                lines.append(f"  {job} {t.get('scrapeUrl')}: {t.get('health')} ({err})")
        except (OSError, PrometheusError) as e:
            lines.append(f"  (targets unavailable: {e})")
        return "\n".join(lines)


def _wait_ready(prom: Prometheus, timeout: float) -> str | None:
    """None once ``/-/ready`` answers 200; otherwise why not (the process exited...)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prom.process.poll() is not None:
            return f"prometheus exited with {prom.process.returncode}"
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return f"prometheus not ready after {timeout}s"


def _spawn(binary: Path, config_file: Path, storage: Path, log_file: Path) -> Prometheus:
    port = free_port()
    log = log_file.open("wb")
    process = subprocess.Popen(
        [
            str(binary),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=info",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return Prometheus(f"http://127.0.0.1:{port}", config_file, log_file, process, log)


@contextmanager
def start_prometheus(
    targets: Mapping[str, Sequence[str]],
    tmp_dir: Path,
    *,
    scrape_interval: str = "1s",
    scheme: str = "http",
    metrics_path: str = "/metrics",
    ca_file: str | None = None,
    insecure_skip_verify: bool = False,
    ready_timeout: float = 30.0,
) -> Iterator[Prometheus]:
    """Run Prometheus scraping ``targets`` (job name -> ``host:port`` list) until exit.

    The configuration is `scrape_config`'s; see `run_prometheus` for the rest.
    """
    config = scrape_config(
        targets,
        scrape_interval=scrape_interval,
        scheme=scheme,
        metrics_path=metrics_path,
        ca_file=ca_file,
        insecure_skip_verify=insecure_skip_verify,
    )
    with run_prometheus(config, tmp_dir, ready_timeout=ready_timeout) as prom:
        yield prom


@contextmanager
def run_prometheus(
    config: Mapping[str, Any], tmp_dir: Path, *, ready_timeout: float = 30.0
) -> Iterator[Prometheus]:
    """Run Prometheus with ``config`` (a whole prometheus.yml as a dict) until exit.

    The configuration (``prometheus.yml``), the storage (``data/``) and the log
    (``prometheus.log``) live under ``tmp_dir``. Waits for ``/-/ready``; fails the test
    (pytest.fail) with the log's tail if the server does not get there. Stopped on
    exit, even on error.
    """
    binary = prometheus_binary()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    config_file = tmp_dir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    prom: Prometheus | None = None
    try:
        for attempt in range(3):  # the free port can be taken before Prometheus binds it
            log_file = tmp_dir / (f"prometheus-{attempt}.log" if attempt else "prometheus.log")
            prom = _spawn(binary, config_file, tmp_dir / "data", log_file)
            why = _wait_ready(prom, ready_timeout)
            if why is None:
                break
            prom.stop()
            if "address already in use" not in prom.log_tail():
                pytest.fail(f"{why}; log {log_file}:\n{prom.log_tail()}", pytrace=False)
        else:
            assert prom is not None
            pytest.fail(f"prometheus found no free port:\n{prom.log_tail()}", pytrace=False)
        yield prom
    finally:
        if prom is not None:
            prom.stop()

"""One kube-proxy (iptables mode) per local cluster, on the host: Services get a ClusterIP.

It writes its rules into the host's nat/filter tables, so ``curl http://$CLUSTERIP``
works from the host and from pods on every real node. It runs in the host's mount
namespace (it touches no kubelet paths); ``--hostname-override`` names one real node
(kube-proxy reads that Node's IP). Stopping it leaves its ``KUBE-*`` chains and
``route_localnet`` behind: `kaito_dev.realnode.hoststate.HostState.restore` removes
and restores them once the kubelets are gone too (``kube-proxy --cleanup`` needs ipset).
Once healthy, it also gets `kaito_dev.realnode.hoststate.reject_unrouted`: what escapes
its rules is refused, as on a real network, instead of answered by this host's egress.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import structlog

from kaito_dev.controlplane import SERVICE_CIDR, ensure_binaries, free_port, stop_pids
from kaito_dev.realnode.hoststate import reject_unrouted
from kaito_dev.realnode.node import BRIDGE_PREFIX, CLUSTER_CIDR, PATH_ENV, NodeBootError

__all__ = ["KubeProxy"]

log = structlog.get_logger("kaito_dev.realnode.kubeproxy")


class KubeProxy:
    def __init__(
        self,
        *,
        kubeconfig: str | Path,
        hostname: str,
        log_dir: Path,
        bin_dir: Path | None = None,
        bind_address: str | None = None,
    ) -> None:
        """``bind_address``: this host's IP; given, kube-proxy takes it as the node's IP
        instead of reading ``hostname``'s Node (which need not exist: it retries ~30 s)."""
        self.bind_address = bind_address
        self.kubeconfig = str(kubeconfig)
        self.hostname = hostname
        self.log_dir = log_dir
        self.bin_dir = bin_dir
        self.healthz_port = free_port()
        self.metrics_port = free_port()
        self.pid: int | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / "kube-proxy.log"

    def args(self, bin_dir: Path) -> list[str]:
        return [
            str(bin_dir / "kube-proxy"),
            f"--kubeconfig={self.kubeconfig}",
            "--proxy-mode=iptables",
            f"--cluster-cidr={CLUSTER_CIDR}",
            f"--hostname-override={self.hostname}",
            "--oom-score-adj=0",
            # Leave the host's conntrack table settings alone.
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            f"--healthz-bind-address=127.0.0.1:{self.healthz_port}",
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
            "--v=1",
            *([f"--bind-address={self.bind_address}"] if self.bind_address else []),
        ]

    def start(self, *, timeout: float = 30.0) -> KubeProxy:
        bin_dir = self.bin_dir or ensure_binaries()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as out:
            proc = subprocess.Popen(
                self.args(bin_dir),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PATH": PATH_ENV},
            )
        self.pid = proc.pid
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if proc.poll() is not None:
                raise NodeBootError(f"kube-proxy exited ({proc.returncode}):\n{self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise NodeBootError(f"kube-proxy not healthy after {timeout:.0f}s:\n{self._tail()}")
            time.sleep(0.1)
        reject_unrouted(SERVICE_CIDR, str(CLUSTER_CIDR), f"{BRIDGE_PREFIX}+")
        log.info("kube-proxy up", seconds=round(time.monotonic() - t0, 2), pid=self.pid)
        return self

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.healthz_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _tail(self, lines: int = 25) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.pid is not None:
            stop_pids({"kube-proxy": self.pid})
            self.pid = None

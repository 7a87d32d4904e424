"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler.

The binaries come from ``hack/local-cluster.sh`` (built once from Debian's
``kubernetes`` source package and cached outside the repository). This module starts
them on free ports with a fresh data directory, waits for ``/readyz``, writes a
kubeconfig with a static admin token, and stops every process by PID.

There is no kubelet: pods are scheduled onto Nodes but nothing runs them unless a node
agent updates their status (the dev cluster adds one).

With ``audit=True`` the apiserver also writes an audit log (``<data_dir>/audit.log``,
JSON lines, `AUDIT_POLICY`): one event per write request (create, update, patch,
delete), with its user agent, its status code and when it was received, so a test can
prove which process wrote what, and when.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog
import yaml

from kaito.runtime.pki import CertificateAuthority, write_rsa_keypair

log = structlog.get_logger("kaito_dev.controlplane")

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "local-cluster.sh"
ADMIN_TOKEN_NAME = "admin"
SERVICE_CIDR = "10.96.0.0/16"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],  # one event per request, when its answer is complete
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}
"""Metadata (no bodies) for every write, nothing for reads: small, and cheap to write."""
CONTROLLERS = (
    "namespace,garbagecollector,serviceaccount,serviceaccount-token,"
    "deployment,replicaset,statefulset,job"
)
# With real kubelets (kaito_dev.realnode): the node lifecycle controller lifts the
# not-ready taint (and would evict pods from nodes that stop heartbeating, which is why
# clusters of simulated nodes leave it off); kube-proxy 1.20 serves Services from
# EndpointSlices; the pod garbage collector deletes the pods of a Node that is gone (a
# deleted agent pool's VM cannot confirm its pods' deletion: without it they stay
# Terminating forever).
REAL_NODE_CONTROLLERS = "nodelifecycle,endpoint,endpointslice,endpointslicemirroring,podgc"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; the message says which part and why."""


def ensure_binaries(*, progress: Callable[[str], None] | None = None) -> Path:
    """Build-or-reuse the control-plane binaries; return their folder.

    The first build takes 8-10 minutes on 2 cores; the script prints its steps and a
    heartbeat to stderr, which we pass through so nobody thinks it hung.
    """
    if not BUILD_SCRIPT.exists():
        raise ControlPlaneError(f"build script missing: {BUILD_SCRIPT}")
    if progress:
        progress("control-plane binaries: build or reuse (first build ~10 min)")
    proc = subprocess.run(
        [str(BUILD_SCRIPT), "build"], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    if proc.returncode != 0:
        raise ControlPlaneError(
            f"building the control plane failed (exit {proc.returncode}); see the output above"
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlaneState:
    """What `down` needs to find a running control plane again: persisted as JSON."""

    data_dir: str
    kubeconfig: str
    server: str
    token: str
    ca_file: str
    pids: dict[str, int] = field(default_factory=dict)
    audit_log: str = ""
    """The apiserver's audit log (JSON lines), "" when started without ``audit``."""

    def save(self) -> None:
        Path(self.data_dir, "state.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, data_dir: Path) -> ControlPlaneState:
        return cls(**json.loads((data_dir / "state.json").read_text()))


class ControlPlane:
    """One local control plane in ``data_dir``.

    ``start()`` is all-or-nothing: if any component fails to come up, everything
    already started is stopped and the error names the component with its log tail.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        bin_dir: Path | None = None,
        audit: bool = False,
        real_nodes: bool = False,
        pod_address: str | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        # Pods reach the apiserver (in-cluster config: the ``kubernetes`` Service) at this
        # host address: it listens there too and advertises it as the Service's endpoint.
        self.pod_address = pod_address
        self.bin_dir = bin_dir
        self.audit = audit
        self.real_nodes = real_nodes
        self.state: ControlPlaneState | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._argv: dict[str, list[str]] = {}

    # -- start ---------------------------------------------------------------------------

    def start(
        self, *, timeout: float = 90.0, progress: Callable[[str], None] | None = None
    ) -> ControlPlaneState:
        say = progress or (lambda msg: log.info(msg))
        t0 = time.monotonic()
        bin_dir = self.bin_dir or ensure_binaries(progress=say)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pki = self.data_dir / "pki"
        ca = CertificateAuthority.create()
        ca_crt, ca_key = ca.write(pki)
        serving_crt, serving_key = ca.issue_serving(
            "kube-apiserver", ["127.0.0.1", "localhost", *self._pod_hosts]
        )
        (pki / "apiserver.crt").write_bytes(serving_crt)
        (pki / "apiserver.key").write_bytes(serving_key)
        write_rsa_keypair(pki / "sa.key", pki / "sa.pub")
        token = os.urandom(16).hex()
        (pki / "tokens.csv").write_text(
            f'{token},{ADMIN_TOKEN_NAME},{ADMIN_TOKEN_NAME},"system:masters"\n'
        )

        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        kubeconfig = self.data_dir / "kubeconfig"
        write_kubeconfig(kubeconfig, server=server, ca_file=ca_crt, token=token)
        self.state = ControlPlaneState(
            data_dir=str(self.data_dir),
            kubeconfig=str(kubeconfig),
            server=server,
            token=token,
            ca_file=str(ca_crt),
        )
        audit_flags: list[str] = []
        if self.audit:
            policy = self.data_dir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
            self.state.audit_log = str(self.data_dir / "audit.log")
            audit_flags = [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.state.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",  # written before the answer: nothing to flush
            ]
        try:
            say(f"starting etcd on 127.0.0.1:{etcd_port}")
            self._spawn(
                "etcd",
                [
                    str(bin_dir / "etcd"),
                    f"--data-dir={self.data_dir / 'etcd'}",
                    f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                    f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                    f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ],
            )
            say(f"starting kube-apiserver on {server}")
            self._spawn(
                "kube-apiserver",
                [
                    str(bin_dir / "kube-apiserver"),
                    f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                    f"--secure-port={api_port}",
                    *self._address_flags,
                    "--insecure-port=0",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={ca_crt}",
                    f"--token-auth-file={pki / 'tokens.csv'}",
                    "--authorization-mode=Node,RBAC",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--enable-priority-and-fairness=false",
                    "--max-requests-inflight=1000",
                    "--max-mutating-requests-inflight=500",
                    *audit_flags,
                    # logs/exec reach a real kubelet at its node's InternalIP.
                    "--kubelet-preferred-address-types=InternalIP,Hostname",
                    "--v=0",
                ],
            )
            self._wait_ready(
                server, token, ca_crt, timeout=max(5.0, timeout - (time.monotonic() - t0))
            )
            say(f"kube-apiserver ready after {time.monotonic() - t0:.1f}s")
            say("starting kube-controller-manager and kube-scheduler")
            self._spawn(
                "kube-controller-manager",
                [
                    str(bin_dir / "kube-controller-manager"),
                    f"--kubeconfig={kubeconfig}",
                    f"--controllers={self.controllers}",
                    "--leader-elect=false",
                    "--use-service-account-credentials=false",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={ca_crt}",
                    f"--cluster-signing-cert-file={ca_crt}",
                    f"--cluster-signing-key-file={ca_key}",
                    "--port=0",
                    "--secure-port=0",
                    "--concurrent-deployment-syncs=10",
                    "--concurrent-replicaset-syncs=10",
                    "--concurrent-gc-syncs=20",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--v=0",
                ],
            )
            self._spawn(
                "kube-scheduler",
                [
                    str(bin_dir / "kube-scheduler"),
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--leader-elect=false",
                    "--port=0",
                    f"--secure-port={free_port()}",
                    "--bind-address=127.0.0.1",
                    f"--cert-dir={self.data_dir / 'scheduler-certs'}",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--v=0",
                ],
            )
            time.sleep(0.5)
            self._check_alive()
        except BaseException:
            self.stop()
            raise
        self.state.save()
        say(f"control plane up in {time.monotonic() - t0:.1f}s; KUBECONFIG={kubeconfig}")
        return self.state

    @property
    def _pod_hosts(self) -> list[str]:
        """The names pods use for the apiserver: the ``kubernetes`` Service's ClusterIP
        and DNS names, and the host address its endpoint points at."""
        if not self.pod_address:
            return []
        service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
        names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        return [self.pod_address, service_ip, *names, "kubernetes.default.svc.cluster.local"]

    @property
    def _address_flags(self) -> list[str]:
        """Loopback only (no endpoint for the ``kubernetes`` Service), or with
        ``pod_address`` every address, that one advertised (the lease endpoint reconciler
        keeps the Service's endpoint at it)."""
        if not self.pod_address:
            return [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
            ]
        return [
            "--bind-address=0.0.0.0",
            f"--advertise-address={self.pod_address}",
            "--endpoint-reconciler-type=lease",
        ]

    @property
    def controllers(self) -> str:
        return f"{CONTROLLERS},{REAL_NODE_CONTROLLERS}" if self.real_nodes else CONTROLLERS

    def kill(self, name: str) -> None:
        """SIGKILL one component (``etcd``, ``kube-apiserver``, ...) and reap it."""
        proc = self._procs[name]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait()

    def restart(self, name: str) -> None:
        """Start a killed component again with its first command line (same ports, same
        data directory); returns at once, without waiting for it to be ready."""
        if self._procs[name].poll() is None:
            raise ControlPlaneError(f"{name} is still running; kill it first")
        self._spawn(name, self._argv[name])

    def _spawn(self, name: str, argv: list[str]) -> None:
        assert self.state is not None
        self._argv[name] = argv
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # not killed by the terminal's Ctrl-C; `down` stops it
            )
        self._procs[name] = proc
        self.state.pids[name] = proc.pid
        self.state.save()

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_ready(self, server: str, token: str, ca_file: Path, *, timeout: float) -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            self._check_alive()
            req = urllib.request.Request(
                f"{server}/readyz", headers={"Authorization": f"Bearer {token}"}
            )
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, OSError) as e:
                last = str(e)
            time.sleep(0.25)
        tail = self.log_tail("kube-apiserver")
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout:.0f}s ({last}):\n{tail}")

    # -- stop ----------------------------------------------------------------------------

    def stop(self, *, remove_data: bool = False) -> None:
        if self.state is not None:
            stop_pids(self.state.pids)
        self._procs.clear()
        if remove_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def stop_pids(pids: dict[str, int], *, grace: float = 10.0) -> None:
    """Stop processes in reverse start order: SIGTERM, then SIGKILL after ``grace`` seconds."""
    for name, pid in reversed(list(pids.items())):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)
        if pid_alive(pid):
            log.warning("process did not stop, killing", component=name, pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: reaped first if it is our child; a zombie that is not
    (one whose parent has not reaped it yet) counts as dead."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return False


def write_kubeconfig(
    path: Path, *, server: str, ca_file: Path, token: str, user: str = "admin"
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kaito-local",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kaito-local", "context": {"cluster": "kaito-local", "user": user}}],
        "current-context": "kaito-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)

"""Boot a real Kubernetes node on this host: containerd + kubelet 1.20.2 + a GPU device plugin.

    node = boot("aks-gpu-12345678-vmss000000", labels={...}, taints=[...],
                pod_cidr="10.244.1.0/24", gpus=2, kubeconfig=..., base_dir=tmp)
    wait_ready(node)            # the Node is Ready (and advertises nvidia.com/gpu = 2)
    stop(node)                  # kubelet, pods, containerd, state, cgroups, bridge: gone
    check_torn_down(node)       # raises NodeLeftovers naming anything left

A node is (REAL-NODES.md has the verified flags and the pitfalls):

- a **mount namespace** of its own: a holder process (``unshare -m --propagation slave``)
  bind-mounts the node's folders over ``/var/lib/kubelet``, ``/var/log/pods``,
  ``/var/log/containers`` and ``/var/lib/cni`` (kubelet 1.20 and libcni hard-code them;
  two kubelets otherwise delete each other's pod logs and device-plugin sockets) and
  ``/var/lib/kaito`` (the node's own disk: hostPath model caches are per node), and
  containerd, the kubelet and the device plugin run inside it (``nsenter``). Mounts
  made there (kubelet volumes, container root filesystems, netns files) never show on
  the host and vanish with the namespace;
- a **containerd** with its own root (``<base>/<node>/containerd``), state and socket
  (``/run/kaito-node/<node>/``; unix socket paths must stay short), CRI with
  ``restrict_oom_score_adj = true`` (root here lacks CAP_SYS_RESOURCE), the sandbox
  image `PAUSE_IMAGE` imported from an archive, network namespaces under its state
  folder, a CNI conflist (bridge ``kbr-<hash>`` + host-local IPAM on ``pod_cidr`` +
  portmap; containerd adds loopback) and, given a local registry ``host:port``, a
  ``hosts.toml`` so that images named ``host:port/...`` (and any ``mirror_for`` host)
  are pulled from it over plain http;
- a **kubelet** with ``--hostname-override`` = the node name, its own ports and root
  folder, ``--cgroup-root=/<node>`` (made in every cgroup v1 hierarchy first), the given
  ``--node-labels`` / ``--register-with-taints``, and the cluster's admin kubeconfig
  (a local cluster: no bootstrap tokens or node certificates) and, given ``cluster_dns``,
  ``--cluster-dns``/``--cluster-domain`` (pods resolve Service names through
  `kaito_dev.realnode.clusterdns`);
- the **device plugin** (`kaito_dev.realnode.deviceplugin`) with ``gpus`` emulated GPUs.

The Node object belongs to whoever asked for the node (the AKS emulator deletes it with
its agent pool; the tests delete it themselves): `stop` leaves the API alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from kaito_dev.controlplane import ensure_binaries, free_port, pid_alive, stop_pids
from kaito_dev.realnode import hoststate
from kaito_dev.realnode.images import PAUSE_IMAGE, pause_archive

__all__ = [
    "NodeBootError",
    "NodeLeftovers",
    "RealNode",
    "Taint",
    "boot",
    "check_torn_down",
    "leftovers",
    "stop",
    "stop_all",
    "wait_ready",
]

log = structlog.get_logger("kaito_dev.realnode")

RUN_ROOT = Path("/run/kaito-node")
# containerd 1.6 shims put their sockets here whatever the state folder (hard-coded).
SHIM_SOCKETS = Path("/run/containerd/s")
CNI_BIN = Path("/usr/lib/cni")
# Host paths kubelet 1.20 / libcni hard-code: each node bind-mounts its own folder there.
PRIVATE_MOUNTS = {
    "kubelet": "/var/lib/kubelet",
    "log/pods": "/var/log/pods",
    "log/containers": "/var/log/containers",
    "cni-state": "/var/lib/cni",
    # The node's own disk for what workloads keep on it: the model cache hostPath
    # (/var/lib/kaito/models) is per node, as on a real VM.
    "disk/kaito": "/var/lib/kaito",
}
# Pod IPs come out of this range; each node gets a /24 (or whatever pod_cidr says).
CLUSTER_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
CLUSTER_DOMAIN = "cluster.local"
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")
UNUSED_SNAPSHOTTERS = ", ".join(
    f'"io.containerd.snapshotter.v1.{s}"' for s in ("aufs", "btrfs", "devmapper", "zfs")
)
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NodeBootError(RuntimeError):
    """A node could not boot or become Ready; the message names the part and its log tail."""


class NodeLeftovers(AssertionError):
    """`check_torn_down` found something of a stopped node still on the host."""


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def flag(self) -> str:
        return (
            f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"
        )


@dataclass
class RealNode:
    """A booted node: what `stop` and `check_torn_down` need (``state.json`` in ``dir``)."""

    name: str
    dir: str  # <base>/<name>: containerd root, kubelet root, logs, configs
    run_dir: str  # /run/kaito-node/<name>: containerd state and socket, netns, runc root
    pod_cidr: str
    bridge: str
    gpus: int
    kubeconfig: str
    kubelet_port: int
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[str] = field(default_factory=list)
    provider_id: str = ""  # --provider-id: the Node's spec.providerID (e.g. an Azure VM)
    cluster_dns: str = ""  # --cluster-dns: the cluster's DNS server (`clusterdns`), if any
    mount_ns: str = ""  # "mnt:[inode]" of the node's mount namespace
    pids: dict[str, int] = field(default_factory=dict)
    booted_at: float = 0.0  # time.time() when boot began
    ready_after_s: float | None = None
    veths: list[str] = field(default_factory=list)  # the bridge's ports, seen at stop

    @property
    def socket(self) -> str:
        return f"{self.run_dir}/containerd.sock"

    def save(self) -> None:
        Path(self.dir, "state.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, node_dir: Path) -> RealNode:
        return cls(**json.loads((node_dir / "state.json").read_text()))

    def log_tail(self, component: str, lines: int = 30) -> str:
        path = Path(self.dir, "logs", f"{component}.log")
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- validation -------------------------------------------------------------------------


def _taints(taints: Sequence[str | Mapping[str, str]]) -> list[Taint]:
    out = []
    for i, t in enumerate(taints):
        if isinstance(t, str):
            m = re.fullmatch(r"([^=:]+)(?:=([^:]*))?:(\w+)", t)
            if not m:
                raise ValueError(f"taints[{i}]: {t!r} is not KEY[=VALUE]:EFFECT")
            taint = Taint(m[1], m[2] or "", m[3])
        else:
            if "key" not in t or "effect" not in t:
                raise ValueError(f"taints[{i}]: needs 'key' and 'effect', got {dict(t)}")
            taint = Taint(t["key"], t.get("value", ""), t["effect"])
        if taint.effect not in TAINT_EFFECTS:
            raise ValueError(f"taints[{i}].effect: {taint.effect!r} is not one of {TAINT_EFFECTS}")
        out.append(taint)
    return out


def _validate(name: str, labels: Mapping[str, str], pod_cidr: str, gpus: int) -> None:
    if not NODE_NAME.match(name):
        raise ValueError(f"name: {name!r} is not a DNS subdomain of at most 63 characters")
    for key, value in labels.items():
        if any(c in f"{key}{value}" for c in ",= "):
            raise ValueError(f"labels[{key!r}]: keys and values may not hold ',', '=' or spaces")
    try:
        net = ipaddress.ip_network(pod_cidr)
    except ValueError as e:
        raise ValueError(f"pod_cidr: {e}") from None
    if not isinstance(net, ipaddress.IPv4Network) or not net.subnet_of(CLUSTER_CIDR):
        raise ValueError(f"pod_cidr: {pod_cidr} is not an IPv4 subnet of {CLUSTER_CIDR}")
    if gpus < 0:
        raise ValueError(f"gpus: must be 0 or more, got {gpus}")


# -- configuration ----------------------------------------------------------------------


def containerd_config(node: RealNode, *, registry_dir: Path) -> str:
    d, run = node.dir, node.run_dir
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{d}/containerd"
state = "{run}"
disabled_plugins = [{UNUSED_SNAPSHOTTERS}]

[grpc]
  address = "{node.socket}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # root lacks CAP_SYS_RESOURCE here: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        Root = "{run}/runc"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
  [{cri}.registry]
    config_path = "{registry_dir}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"""


def cni_conflist(node: RealNode) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": f"kaito-{node.bridge}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": node.bridge,
                "isGateway": True,
                "ipMasq": False,  # pods talk to pods and the host only: no NAT rules to leak
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def write_registry_hosts(registry_dir: Path, registry: str, mirror_for: Sequence[str]) -> None:
    """``hosts.toml`` for ``registry`` itself and each ``mirror_for`` host: plain http to it."""
    for host in [registry, *mirror_for]:
        folder = registry_dir / host
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts.toml").write_text(
            f'server = "http://{registry}"\n\n'
            f'[host."http://{registry}"]\n  capabilities = ["pull", "resolve"]\n'
        )


def kubelet_args(node: RealNode, bin_dir: Path) -> list[str]:
    d = node.dir
    args = [
        str(bin_dir / "kubelet"),
        f"--kubeconfig={node.kubeconfig}",
        "--container-runtime=remote",
        f"--container-runtime-endpoint=unix://{node.socket}",
        f"--hostname-override={node.name}",
        f"--root-dir={d}/kubelet",
        f"--cert-dir={d}/pki",
        f"--volume-plugin-dir={d}/volume-plugins",
        "--cgroup-driver=cgroupfs",
        f"--cgroup-root=/{node.name}",
        "--cgroups-per-qos=true",
        "--fail-swap-on=false",
        f"--port={node.kubelet_port}",
        "--read-only-port=0",
        "--healthz-port=0",
        "--image-gc-high-threshold=100",
        "--image-gc-low-threshold=99",
        "--eviction-hard=",
        "--authentication-token-webhook=false",
        "--authorization-mode=AlwaysAllow",
        "--oom-score-adj=0",
        "--node-status-update-frequency=4s",
        "--v=1",
    ]
    if node.labels:
        args.append("--node-labels=" + ",".join(f"{k}={v}" for k, v in node.labels.items()))
    if node.taints:
        args.append("--register-with-taints=" + ",".join(node.taints))
    if node.provider_id:
        args.append(f"--provider-id={node.provider_id}")
    if node.cluster_dns:
        # Pods' resolv.conf: this server, the cluster's search path, ndots:5.
        args += [f"--cluster-dns={node.cluster_dns}", f"--cluster-domain={CLUSTER_DOMAIN}"]
    return args


# -- boot -------------------------------------------------------------------------------


BRIDGE_PREFIX = "kbr-"


def bridge_name(name: str) -> str:
    return BRIDGE_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:8]


def boot(
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    taints: Sequence[str | Mapping[str, str]] = (),
    pod_cidr: str,
    gpus: int = 0,
    kubeconfig: str | Path,
    base_dir: Path,
    registry: str | None = None,
    mirror_for: Sequence[str] = (),
    bin_dir: Path | None = None,
    provider_id: str = "",
    cluster_dns: str = "",
) -> RealNode:
    """Start a node's containerd, kubelet and (``gpus`` > 0) device plugin; return at once.

    `wait_ready` waits for the Node. On any failure everything started is stopped again
    and the error carries the failing part's log tail.
    """
    labels = dict(labels or {})
    parsed_taints = _taints(taints)
    _validate(name, labels, pod_cidr, gpus)
    if os.geteuid() != 0:
        raise NodeBootError("real nodes need root (mount namespaces, cgroups, bridges)")
    bin_dir = bin_dir or ensure_binaries()
    for binary in ("kubelet",):
        if not (bin_dir / binary).exists():
            raise NodeBootError(f"{bin_dir / binary} missing: run hack/local-cluster.sh build")
    archive = pause_archive()  # also installs containerd, runc, CNI plugins when missing
    for tool in ("containerd", "ctr", "runc", "unshare", "nsenter"):
        if not shutil.which(tool, path=PATH_ENV):
            raise NodeBootError(f"{tool} not found: run hack/node-tools.sh tools")

    node_dir = (base_dir / name).resolve()
    run_dir = RUN_ROOT / name
    for d in (node_dir, run_dir):
        if d.exists():
            raise NodeBootError(f"{d} exists: a node {name} is running or was not torn down")
    node = RealNode(
        name=name,
        dir=str(node_dir),
        run_dir=str(run_dir),
        pod_cidr=pod_cidr,
        bridge=bridge_name(name),
        gpus=gpus,
        kubeconfig=str(Path(kubeconfig).resolve()),
        kubelet_port=free_port(),
        labels=labels,
        taints=[t.flag() for t in parsed_taints],
        provider_id=provider_id,
        cluster_dns=cluster_dns,
        booted_at=time.time(),
    )
    for sub in [*PRIVATE_MOUNTS, "logs", "cni/net.d", "certs.d", "pki", "opt"]:
        (node_dir / sub).mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True)
    node.save()
    try:
        _start(node, bin_dir, archive, registry, mirror_for)
    except BaseException:
        stop(node)
        raise
    return node


def _start(
    node: RealNode, bin_dir: Path, archive: Path, registry: str | None, mirror_for: Sequence[str]
) -> None:
    d = Path(node.dir)
    registry_dir = d / "certs.d"
    if registry:
        write_registry_hosts(registry_dir, registry, mirror_for)
    (d / "containerd.toml").write_text(containerd_config(node, registry_dir=registry_dir))
    (d / "cni/net.d/10-kaito.conflist").write_text(json.dumps(cni_conflist(node), indent=2))
    hoststate.make_cgroups(node.name)

    # The mount namespace: a holder process makes the private bind mounts, then sleeps.
    binds = []
    for sub, target in PRIVATE_MOUNTS.items():
        Path(target).mkdir(parents=True, exist_ok=True)  # the mount point, on the host
        binds.append(f"mount --bind {d / sub} {target}")
    script = " && ".join([*binds, "echo mounted", "exec sleep infinity"])
    holder = _spawn(
        node,
        "holder",
        ["unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    line = holder.stdout.readline()
    if line.strip() != b"mounted":
        raise NodeBootError(
            f"{node.name}: mount namespace set-up failed:\n{node.log_tail('holder')}"
        )
    node.mount_ns = os.readlink(f"/proc/{holder.pid}/ns/mnt")
    node.save()
    enter = ["nsenter", f"--mount=/proc/{holder.pid}/ns/mnt", "--"]

    t0 = time.monotonic()
    _spawn(node, "containerd", [*enter, "containerd", "--config", str(d / "containerd.toml")])
    _wait(node, "containerd", lambda: _ctr(node, "version").returncode == 0, timeout=30)
    imported = _ctr(node, "-n", "k8s.io", "images", "import", str(archive))
    if imported.returncode != 0:
        raise NodeBootError(f"{node.name}: importing the pause image failed: {imported.stderr}")
    log.info("containerd up", node=node.name, seconds=round(time.monotonic() - t0, 2))

    _spawn(node, "kubelet", [*enter, *kubelet_args(node, bin_dir)])
    if node.gpus > 0:
        src = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
        _spawn(
            node,
            "device-plugin",
            [
                *enter,
                sys.executable,
                "-m",
                "kaito_dev.realnode.deviceplugin",
                f"--count={node.gpus}",
            ],
            env=env,
        )
    node.save()
    log.info("node booting", node=node.name, pod_cidr=node.pod_cidr, gpus=node.gpus)


def _spawn(
    node: RealNode,
    component: str,
    argv: list[str],
    *,
    stdout: int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    logfile = Path(node.dir, "logs", f"{component}.log")
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=stdout if stdout is not None else out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**(env or os.environ), "PATH": PATH_ENV},
        )
    node.pids[component] = proc.pid
    node.save()
    return proc


def _wait(node: RealNode, component: str, check: Any, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if not pid_alive(node.pids[component]):
            raise NodeBootError(f"{node.name}: {component} exited:\n{node.log_tail(component)}")
        if time.monotonic() > deadline:
            raise NodeBootError(
                f"{node.name}: {component} not up after {timeout:.0f}s:\n{node.log_tail(component)}"
            )
        time.sleep(0.1)


def _ctr(node: RealNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", node.socket, *args], capture_output=True, text=True, check=False
    )


# -- readiness --------------------------------------------------------------------------


def _api(kubeconfig: str) -> tuple[str, dict[str, str], ssl.SSLContext]:
    config = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
    return cluster["server"], {"Authorization": f"Bearer {user['token']}"}, ctx


def get_node(kubeconfig: str, name: str) -> dict[str, Any] | None:
    server, headers, ctx = _api(kubeconfig)
    req = urllib.request.Request(f"{server}/api/v1/nodes/{name}", headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            node: dict[str, Any] = json.load(resp)
            return node
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def is_ready(obj: dict[str, Any], gpus: int) -> bool:
    conditions = obj.get("status", {}).get("conditions", [])
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    advertised = obj.get("status", {}).get("allocatable", {}).get("nvidia.com/gpu", "0")
    not_ready_taint = any(
        t["key"] == "node.kubernetes.io/not-ready" for t in obj.get("spec", {}).get("taints", [])
    )
    return ready and not not_ready_taint and int(advertised) == gpus


def wait_ready(node: RealNode, *, timeout: float = 90.0) -> float:
    """Wait until the Node is Ready, untainted by the lifecycle controller, and advertises
    ``nvidia.com/gpu`` = ``gpus``; return the seconds since `boot` began."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        for component in ("containerd", "kubelet", "device-plugin"):
            pid = node.pids.get(component)
            if pid and not pid_alive(pid):
                raise NodeBootError(f"{node.name}: {component} exited:\n{node.log_tail(component)}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            last = get_node(node.kubeconfig, node.name)
        if last is not None and is_ready(last, node.gpus):
            node.ready_after_s = round(time.time() - node.booted_at, 2)
            node.save()
            log.info("node ready", node=node.name, seconds=node.ready_after_s)
            return node.ready_after_s
        time.sleep(0.25)
    status = json.dumps((last or {}).get("status", {}).get("conditions", []))[:1500]
    raise NodeBootError(
        f"{node.name}: not Ready after {timeout:.0f}s (conditions: {status}):\n"
        f"{node.log_tail('kubelet')}"
    )


# -- stop -------------------------------------------------------------------------------


def _remove_pods(node: RealNode) -> None:
    """CRI: stop every pod sandbox (containerd runs the CNI DEL) and remove it."""
    import grpc  # the dev extra; imported here so the module loads without it

    protos, services = grpc.protos_and_services("kaito_dev/realnode/cri.proto")
    with grpc.insecure_channel(f"unix://{node.socket}") as channel:
        stub = services.RuntimeServiceStub(channel)
        sandboxes = stub.ListPodSandbox(protos.ListPodSandboxRequest(), timeout=10).items
        for sandbox in sandboxes:
            stub.StopPodSandbox(protos.StopPodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=60)
            stub.RemovePodSandbox(
                protos.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=60
            )
        log.info("pods removed", node=node.name, sandboxes=len(sandboxes))


def _kill(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop(node: RealNode, *, keep_logs: Path | None = None) -> None:
    """Stop the node and remove everything it put on the host (idempotent).

    Order: device plugin and kubelet (nothing restarts pods), every pod sandbox through
    CRI (CNI DEL frees IPs, veths and rules), containerd, anything still in the node's
    mount namespace or cgroups (shims, stray containers), the holder (the namespace and
    its mounts go), then cgroups, the bridge and the folders (``keep_logs``: copy the
    node's logs there first). The Node object stays.
    """
    t0 = time.monotonic()
    # The pods' host-side veths, for `leftovers` to check (CNI DEL is about to remove them).
    node.veths = sorted(set(node.veths) | set(hoststate.bridge_ports(node.bridge)))
    stop_pids({c: node.pids[c] for c in ("kubelet", "device-plugin") if c in node.pids})
    if "containerd" in node.pids and pid_alive(node.pids["containerd"]):
        try:
            _remove_pods(node)
        except Exception as e:  # containerd hung or half up: the kill below still cleans
            log.warning("removing pods through CRI failed", node=node.name, error=str(e))
        stop_pids({"containerd": node.pids["containerd"]})
    if node.mount_ns:
        holder = node.pids.get("holder")
        _kill([p for p in hoststate.processes_in_mount_ns(node.mount_ns) if p != holder])
    _kill(sorted(hoststate.cgroup_pids(node.name)))
    if "holder" in node.pids:
        _kill([node.pids["holder"]])
        pid_alive(node.pids["holder"])  # reap
    deadline = time.monotonic() + 10
    while node.mount_ns and hoststate.processes_in_mount_ns(node.mount_ns):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    hoststate.remove_cgroups(node.name)
    hoststate.delete_link(node.bridge)
    shutil.rmtree(node.run_dir, ignore_errors=True)
    for empty in (RUN_ROOT, SHIM_SOCKETS, SHIM_SOCKETS.parent):  # only when nothing else uses them
        with contextlib.suppress(OSError):
            empty.rmdir()
    with contextlib.suppress(OSError):
        node.save()
    if keep_logs is not None and Path(node.dir, "logs").is_dir():
        shutil.copytree(Path(node.dir, "logs"), keep_logs, dirs_exist_ok=True)
    shutil.rmtree(node.dir, ignore_errors=True)
    log.info("node stopped", node=node.name, seconds=round(time.monotonic() - t0, 2))


def leftovers(node: RealNode) -> list[str]:
    """What of ``node`` is still on the host (empty after a clean `stop`)."""
    out = []
    for component, pid in node.pids.items():
        if pid_alive(pid):
            out.append(f"process {component} (pid {pid})")
    if node.mount_ns:
        out += [
            f"process {p} in the node's mount namespace"
            for p in hoststate.processes_in_mount_ns(node.mount_ns)
        ]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (
                    (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                if node.run_dir in cmdline or node.dir in cmdline:
                    out.append(f"process {proc.name}: {cmdline[:120]}")
    mounts = Path("/proc/self/mountinfo").read_text()
    out += [
        f"mount {ln.split()[4]}"
        for ln in mounts.splitlines()
        if node.dir in ln or node.run_dir in ln
    ]
    out += [f"cgroup {d}" for d in hoststate.cgroup_dirs(node.name)]
    out += [f"cgroup process {p}" for p in hoststate.cgroup_pids(node.name)]
    if hoststate.link_exists(node.bridge):
        out.append(f"bridge {node.bridge}")
    out += [f"veth {v}" for v in node.veths if hoststate.link_exists(v)]
    out += [f"folder {d}" for d in (node.dir, node.run_dir) if Path(d).exists()]
    out += [
        f"iptables rule {ln}"
        for ln in hoststate.iptables_lines()
        if node.bridge in ln or node.pod_cidr in ln
    ]
    return out


def check_torn_down(node: RealNode, *, timeout: float = 10.0) -> None:
    """Raise `NodeLeftovers` unless nothing of ``node`` is left (waits up to ``timeout``
    for the kernel to finish tearing down network namespaces and veths)."""
    deadline = time.monotonic() + timeout
    while (left := leftovers(node)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        raise NodeLeftovers(f"node {node.name} left: " + "; ".join(left))


def stop_and_check_all(base_dir: Path, *, say: Callable[[str], None]) -> list[str]:
    """Stop every node with a ``state.json`` under ``base_dir``, check each left nothing on
    the host (`check_torn_down`), and remove the folder; return what any of them left."""
    left = []
    for record in sorted(base_dir.glob("*/state.json")):
        node = RealNode.load(record.parent)
        stop(node)
        try:
            check_torn_down(node)
        except NodeLeftovers as e:
            left.append(str(e))
        say(node.name)
    shutil.rmtree(base_dir, ignore_errors=True)
    return left


def stop_all(base_dir: Path) -> list[str]:
    """Stop every node with a ``state.json`` under ``base_dir`` (what a run that died left);
    return their names. `HostState.capture` on the same record file then restores the host."""
    names = []
    for state in sorted(base_dir.glob("*/state.json")):
        node = RealNode.load(state.parent)
        stop(node)
        names.append(node.name)
    return names

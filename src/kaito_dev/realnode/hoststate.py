"""Everything real local nodes change on the host, in one place: record it, undo it, check it.

Kubelets, kube-proxy and the CNI plugins all write host-wide state:

- sysctls: the kubelet sets ``vm.overcommit_memory`` 0->1, ``kernel.panic`` ->10,
  ``kernel.panic_on_oops`` ->1 (and ``vm.panic_on_oom``, the keyring limits); kube-proxy
  sets ``net.ipv4.conf.all.route_localnet`` ->1; `HostState.prepare` turns on
  ``net.ipv4.ip_forward`` (pods on one node's bridge reach another's) and
  ``net.bridge.bridge-nf-call-iptables`` (Service traffic between pods of one bridge
  passes kube-proxy's rules). `HostState` records them all before the first node boots
  and writes them back at teardown; the record is a JSON file, so a run that died is
  undone by the next one (it keeps the first record's values).
- iptables: ``KUBE-*`` chains of the kubelet (KUBE-FIREWALL, KUBE-MARK-*, canaries), of
  kube-proxy (KUBE-SERVICES, ...), in IPv4 and IPv6, and our own `UNROUTED_CHAIN`
  (`reject_unrouted`). ``kube-proxy --cleanup`` needs ``ipset``; `remove_kube_chains`
  deletes the jumps to them and the chains itself.
- cgroups (v1): ``/<node>`` in every hierarchy, made before the kubelet starts (with
  ``cpuset.cpus``/``cpuset.mems`` copied from the root) and removed bottom-up at stop.
- links: each node's CNI bridge (its pods' veths go with their network namespaces).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import structlog

__all__ = [
    "SYSCTLS",
    "UNROUTED_CHAIN",
    "HostState",
    "cgroup_dirs",
    "delete_link",
    "iptables_lines",
    "kube_chains",
    "link_exists",
    "make_cgroups",
    "read_sysctl",
    "reject_unrouted",
    "remove_cgroups",
    "remove_kube_chains",
    "write_sysctl",
]

log = structlog.get_logger("kaito_dev.realnode.hoststate")

CGROUP_ROOT = Path("/sys/fs/cgroup")
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
)
# What the nodes need switched on (recorded first like the rest).
PREPARED = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"}


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys", *name.split("."))


def read_sysctl(name: str) -> str | None:
    """The value, or None where the kernel has no such sysctl (e.g. no br_netfilter)."""
    try:
        return _sysctl_path(name).read_text().strip()
    except FileNotFoundError:
        return None


def write_sysctl(name: str, value: str) -> None:
    _sysctl_path(name).write_text(value + "\n")


class HostState:
    """The host's sysctls as they were before any real node started (``path``: the record)."""

    def __init__(self, path: Path, values: dict[str, str | None]) -> None:
        self.path = path
        self.values = values

    @classmethod
    def capture(cls, path: Path) -> HostState:
        """Record the sysctls now, or keep an existing record (a run that died left it)."""
        if path.exists():
            values = json.loads(path.read_text())
            log.warning(
                "host state record found: a previous run did not restore it", path=str(path)
            )
        else:
            values = {name: read_sysctl(name) for name in SYSCTLS}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values, indent=2))
        return cls(path, values)

    def prepare(self) -> None:
        """Switch on what nodes need: IPv4 forwarding and bridge netfilter."""
        for name, value in PREPARED.items():
            if read_sysctl(name) is not None:
                write_sysctl(name, value)

    def restore(self) -> None:
        """Write the recorded sysctls back, remove every ``KUBE-*`` chain, drop the record.

        Call it after the kubelets and kube-proxy have stopped (they would put them back).
        """
        for name, value in self.values.items():
            if value is not None and read_sysctl(name) != value:
                write_sysctl(name, value)
                log.info("sysctl restored", name=name, value=value)
        remove_kube_chains()
        self.path.unlink(missing_ok=True)

    def leftovers(self) -> list[str]:
        """What is not back as recorded: changed sysctls, ``KUBE-*`` chains."""
        out = [
            f"sysctl {name} = {read_sysctl(name)} (was {value})"
            for name, value in self.values.items()
            if value is not None and read_sysctl(name) != value
        ]
        out += [f"iptables chain {c}" for c in kube_chains()]
        return out


# -- iptables ---------------------------------------------------------------------------

IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle")


def _save(tool: str, table: str) -> list[str]:
    proc = subprocess.run(
        [f"{tool}-save", "-t", table], capture_output=True, text=True, check=False
    )
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def iptables_lines() -> list[str]:
    """Every rule and chain line of the host's IPv4 and IPv6 tables we touch."""
    return [
        f"{tool} {table}: {line}"
        for tool in IPTABLES
        for table in TABLES
        for line in _save(tool, table)
        if line.startswith(("-A", ":"))
    ]


def kube_chains() -> list[str]:
    return [
        f"{tool} {table} {line[1:].split()[0]}"
        for tool in IPTABLES
        for table in TABLES
        for line in _save(tool, table)
        if line.startswith(":KUBE-")
    ]


def _restore(tool: str, script: list[str], *, what: str) -> None:
    """``<tool>-restore --noflush`` of ``script``'s lines (chains it does not name stay)."""
    proc = subprocess.run(
        [f"{tool}-restore", "--noflush"],
        input="\n".join(script),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{tool}-restore ({what}) failed: {proc.stderr.strip()}")


def remove_kube_chains() -> None:
    """Delete the jumps into ``KUBE-*`` chains, then flush and delete the chains."""
    for tool in IPTABLES:
        for table in TABLES:
            lines = _save(tool, table)
            chains = [ln[1:].split()[0] for ln in lines if ln.startswith(":KUBE-")]
            if not chains:
                continue
            script = [f"*{table}"]
            script += [
                "-D" + ln[2:]
                for ln in lines
                if ln.startswith("-A ")
                and not ln.split()[1].startswith("KUBE-")
                and " -j KUBE-" in ln
            ]
            script += [f":{c} - [0:0]" for c in chains]  # declaring a chain flushes it
            script += [f"-X {c}" for c in chains]
            script.append("COMMIT\n")
            _restore(tool, script, what=table)
            log.info("iptables chains removed", tool=tool, table=table, chains=len(chains))


UNROUTED_CHAIN = "KUBE-KAITO-UNROUTED"


def reject_unrouted(service_cidr: str, cluster_cidr: str, bridges: str) -> None:
    """Refuse connections to a ClusterIP kube-proxy did not translate, or to a pod IP no
    node's bridge (``bridges``: an iptables interface pattern) carries, as a real
    cluster's network would drop them.

    Why: on a real network such a packet goes to the default gateway and is lost, and the
    client retries. Behind this host's default route sits an egress proxy that answers
    every TCP connection (an empty HTTP 404 on any port), so a packet that slipped past
    kube-proxy (a ClusterIP it has not translated) got a stranger's answer, and a
    keep-alive client kept talking to that stranger. Rejected, the client sees
    "connection refused", as for a Service without endpoints, and tries again.

    The chain is filter's (after nat's DNAT: a translated packet no longer has a
    ClusterIP destination), appended to OUTPUT (the host's own clients) and FORWARD
    (pods), after kube-proxy's own REJECTs of Services without endpoints: its counters
    count only what kube-proxy did not know. Idempotent, so a restarted kube-proxy
    re-installs it. Its ``KUBE-`` name puts it under `remove_kube_chains` and
    `kube_chains` (the leak checks).
    """
    rules = [
        f"-A {UNROUTED_CHAIN} -d {service_cidr} -j REJECT",
        # Not after a DNAT: in OUTPUT, ``-o`` still names the device routed to before
        # the DNAT (the default route's), not the pod's bridge the packet now goes to.
        f"-A {UNROUTED_CHAIN} -d {cluster_cidr} -m conntrack ! --ctstate DNAT"
        f" ! -o {bridges} -j REJECT",
    ]
    _restore("iptables", ["*filter", f":{UNROUTED_CHAIN} - [0:0]", *rules, "COMMIT\n"],
             what=UNROUTED_CHAIN)  # fmt: skip
    for hook in ("OUTPUT", "FORWARD"):
        jump = [hook, "-j", UNROUTED_CHAIN]
        if subprocess.run(["iptables", "-C", *jump], capture_output=True, check=False).returncode:
            subprocess.run(["iptables", "-A", *jump], capture_output=True, text=True, check=True)
    log.info("unrouted cluster traffic rejected", services=service_cidr, pods=cluster_cidr)


# -- cgroups ----------------------------------------------------------------------------


def _hierarchies() -> list[Path]:
    """The cgroup v1 hierarchies (``unified`` is the v2 one of a hybrid mount)."""
    return sorted(
        p
        for p in CGROUP_ROOT.iterdir()
        if p.is_dir() and not p.is_symlink() and p.name != "unified"
    )


def make_cgroups(name: str) -> None:
    """``/<name>`` in every v1 hierarchy: the kubelet's ``--cgroup-root``."""
    for hierarchy in _hierarchies():
        path = hierarchy / name
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (path / knob).write_text((hierarchy / knob).read_text())


def cgroup_dirs(name: str) -> list[Path]:
    return [h / name for h in [*_hierarchies(), CGROUP_ROOT / "unified"] if (h / name).is_dir()]


def cgroup_pids(name: str) -> set[int]:
    """Every process in ``/<name>``'s subtree (container processes the runtime left)."""
    pids: set[int] = set()
    for top in cgroup_dirs(name):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def remove_cgroups(name: str, *, timeout: float = 10.0) -> None:
    """rmdir ``/<name>`` and everything under it, deepest first (retries while the kernel
    still counts exiting tasks)."""
    deadline = time.monotonic() + timeout
    while True:
        busy = []
        for top in cgroup_dirs(name):
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                try:
                    d.rmdir()
                except OSError:
                    busy.append(d)
            try:
                top.rmdir()
            except OSError:
                busy.append(top)
        if not busy:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cgroups still busy after {timeout:.0f}s: {busy[:5]}")
        time.sleep(0.1)


# -- links ------------------------------------------------------------------------------


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def bridge_ports(bridge: str) -> list[str]:
    brif = Path("/sys/class/net", bridge, "brif")
    return sorted(p.name for p in brif.iterdir()) if brif.exists() else []


def delete_link(name: str) -> None:
    if link_exists(name):
        subprocess.run(["ip", "link", "delete", name], check=False, capture_output=True)


def processes_in_mount_ns(ns: str) -> list[int]:
    """PIDs whose mount namespace is ``ns`` (``mnt:[inode]``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "mnt") == ns:
                    pids.append(int(entry.name))
    return pids

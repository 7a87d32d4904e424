"""The local KAITO stack on top of the control plane: CRDs, RBAC, a local OCI registry,
the AKS emulator, a Hugging Face hub emulator, controllers, and nodes.

Nodes (``nodes=``):

- ``real`` (the default): every AKS agent-pool VM is a real node on this host
  (containerd + kubelet 1.20.2 + the emulated-GPU device plugin, booted by the AKS
  emulator, `kaito_dev.aks.realnodes`), one kube-proxy gives Services their ClusterIPs,
  a DNS server answers for the cluster domain (`kaito_dev.realnode.clusterdns`: Service
  and StatefulSet pod names, as CoreDNS would), and the pods run the project's images,
  built and pushed to the stack's registry (``inference``, ``tuning``, ``curl``; buildah
  reuses its layers and the registry's blobs live in the cache, so only the first ``up``
  on a machine pays). The controllers
  name that registry (``--image-registry``) and the hub (``--hf-endpoint``), which
  listens on the host's address: pods live in their own network namespaces, where
  127.0.0.1 is the pod itself. So does a second, authenticated listener on the
  registry's storage (`Stack.start_pod_registry`), where tuning Jobs push adapter
  images and adapter init containers pull them (over plain http: the controller's
  ``--plain-http-registry``). The host sysctls and ``KUBE-*`` chains the kubelets and
  kube-proxy change are recorded first (`HostState`) and restored at ``down``.
- ``agent``: the FALLBACK for machines that cannot run real nodes (no root, no
  containerd): Node objects only, and the node agent (`kaito_dev.nodeagent`) plays the
  kubelet, running the pods' commands as local processes (argv rewritten for CPU).

The controllers (``controllers=``): ``in-cluster`` installs them as users do, ``kubectl
apply -k`` of deploy/ onto a real system node (`kaito_dev.incluster`; ``kaito dev up``'s
default with real nodes), or ``process`` runs both as host processes authenticated as
their ServiceAccounts. Both share the real-node setup (`Stack.start_real_nodes`).

The hub emulator serves the tiny stand-in model under every preset's repo at the
preset's pinned revision (`kaito_dev.hfhub.presets`), and the ``fetch-weights`` init
containers download from it: the weights take the real fetch path, only the bytes are
a stand-in (the hub's log and the demo say so).

Each component runs as its own process, started with the same command a container
would run (``kaito dev aks-emulator``, ``kaito gpu-provisioner``, ...), in a new
session so a terminal's Ctrl-C does not take it down; its PID joins the control plane's
state file so ``kaito dev down`` stops everything in reverse start order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.errors import AlreadyExists
from kaito.runtime.resource import CUSTOMRESOURCEDEFINITIONS
from kaito_dev import identities
from kaito_dev.controlplane import REPO_ROOT, ControlPlaneError, ControlPlaneState, free_port
from kaito_dev.hfhub.presets import DEV_TOKEN, preset_repos
from kaito_dev.nodeagent.agent import DEFAULT_PYTHON, PYTHONPATH
from kaito_dev.nodeagent.env import CPU_ENV
from kaito_dev.nodeagent.model import StandInModel
from kaito_dev.realnode.hoststate import HostState
from kaito_dev.registry import LocalRegistry

CRD_DIR = REPO_ROOT / "deploy" / "crds"


async def install_crds(client: Client, *, timeout: float = 30.0) -> list[str]:
    """Create every CRD in ``deploy/crds`` (existing ones are kept) and wait until served."""
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            names.append(doc["metadata"]["name"])
            with contextlib.suppress(AlreadyExists):
                await client.create(CUSTOMRESOURCEDEFINITIONS, doc)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = await client.get(CUSTOMRESOURCEDEFINITIONS, name)
            conds = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions") or ()}
            if conds.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"CRD {name} not established after {timeout:.0f}s")
            await asyncio.sleep(0.1)
    return names


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip().removeprefix("export ")
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key] = value.strip().strip("'\"")
    return env


class Stack:
    """Starts the dev components next to a running control plane and records their PIDs."""

    def __init__(self, state: ControlPlaneState, *, say: Callable[[str], None]) -> None:
        self.state = state
        self.say = say
        self.dir = Path(state.data_dir)
        self.logs = self.dir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.ports: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._commands: dict[str, tuple[list[str], dict[str, str] | None]] = {}
        self.env = {
            **os.environ,
            "KUBECONFIG": state.kubeconfig,
            "KAITO_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> int:
        """Start ``kaito <args>``; ``dev ...`` runs this package directly (`kaito.cli`
        would hand it over with an exec anyway)."""
        command = ["-m", "kaito_dev", *args[1:]] if args[0] == "dev" else ["-m", "kaito.cli", *args]
        self._commands[name] = (args, env)
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, *command],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env or self.env,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.state.pids[name] = proc.pid
        self.state.save()
        return proc.pid

    def kill(self, name: str) -> None:
        """SIGKILL the component ``name`` (as the kernel's OOM killer would) and reap it."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait()

    def restart(self, name: str) -> int:
        """Start ``name`` again with the command and environment it was first given."""
        if self.procs[name].poll() is None:
            raise ControlPlaneError(f"{name} is still running; kill it first")
        args, env = self._commands[name]
        return self.spawn(name, args, env)

    def wait_for(self, what: str, check: Callable[[], bool], pid: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            try:
                waited, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                waited = 0
            if waited == pid:
                name = next((n for n, p in self.state.pids.items() if p == pid), "?")
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise ControlPlaneError(f"{name} exited while waiting for {what}:\n{tail}")
            time.sleep(0.1)
        raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}")

    def start_aks_emulator(
        self,
        *,
        create_latency: float = 2.0,
        port: int = 0,
        extra: tuple[str, ...] = (),
        registry: str | None = None,
        mirror_for: Sequence[str] = (),
        cluster_dns: str = "",
    ) -> dict[str, str]:
        """The emulated AKS agent-pool API; returns the provisioner's environment. A fixed
        ``port`` lets a restarted emulator answer on the same URL; ``extra`` arguments
        (e.g. ``--delete-latency``) follow the defaults. With ``registry`` its VMs are real
        nodes pulling from it (`node_dir`), also for images named ``mirror_for`` hosts,
        whose pods resolve through ``cluster_dns``."""
        emu_dir = self.dir / "aks-emulator"
        env_file = emu_dir / "provisioner.env"
        real = ["--nodes", "real", "--node-dir", str(self.node_dir), f"--registry={registry}",
                f"--cluster-dns={cluster_dns}"]  # fmt: skip
        real += [f"--mirror-for={host}" for host in mirror_for]
        self.say(
            f"starting the AKS emulator (agent pools take {create_latency:g}s to create"
            + ("; each VM boots a REAL node: containerd + kubelet + GPU device plugin)"
               if registry else "; Node objects only)")
        )  # fmt: skip
        pid = self.spawn(
            "aks-emulator",
            [
                "dev", "aks-emulator", "--port", str(port), "--dir", str(emu_dir),
                "--cluster-name", "kaito-dev", "--create-latency", str(create_latency),
                "--node-ready-delay", "0.5", *extra, *(real if registry else []),
            ],
        )  # fmt: skip

        def written() -> bool:
            return env_file.exists() and env_file.stat().st_size > 0

        self.wait_for("the AKS emulator", written, pid, timeout=30)
        return read_env_file(env_file)

    def identity_env(self, kubeconfig: str) -> dict[str, str]:
        """The environment of a controller authenticated as its ServiceAccount."""
        return {**self.env, "KUBECONFIG": kubeconfig, "POD_NAMESPACE": identities.NAMESPACE}

    def start_gpu_provisioner(
        self, arm_env: dict[str, str], kubeconfig: str, extra_env: dict[str, str] | None = None
    ) -> None:
        """``extra_env`` (e.g. ``REGISTRATION_TIMEOUT_SECONDS``) overrides the defaults."""
        self.say("starting the gpu-provisioner (as ServiceAccount kaito-system/gpu-provisioner)")
        env = {**self.identity_env(kubeconfig), **arm_env, "ARM_POLLING_INTERVAL": "0.2"}
        env.update(extra_env or {})
        metrics = self.ports["gpu-provisioner-metrics"] = free_port()
        self.spawn(
            "gpu-provisioner",
            ["gpu-provisioner", f"--metrics-bind-address=127.0.0.1:{metrics}",
             "--health-probe-bind-address", "127.0.0.1:0"],
            env,
        )  # fmt: skip

    @property
    def node_dir(self) -> Path:
        """Where the AKS emulator's real nodes keep their state (`node_dir_for`)."""
        return node_dir_for(self.dir)

    def start_workspace_controller(
        self, kubeconfig: str, *, settings: Mapping[str, str] | None = None
    ) -> None:
        """The workspace controller with its webhook registered for the local apiserver;
        ``settings``: environment its flags default from (``KAITO_IMAGE_REGISTRY``, ...)."""
        self.say(
            "starting the workspace controller with its validating webhook "
            "(as ServiceAccount kaito-system/kaito-workspace-controller)"
        )
        probes = free_port()
        metrics = self.ports["workspace-controller-metrics"] = free_port()
        pid = self.spawn(
            "workspace-controller",
            [
                "workspace-controller", f"--metrics-bind-address=127.0.0.1:{metrics}",
                f"--health-probe-bind-address=127.0.0.1:{probes}",
                "--webhook-bind-address=127.0.0.1:0", "--webhook-cert-secret=",
                "--webhook-url=https://127.0.0.1:{port}/validate/workspaces",
            ],
            {**self.identity_env(kubeconfig), **(settings or {})},
        )  # fmt: skip
        self.wait_for("the workspace controller's /readyz", lambda: _http_ok(probes), pid,
                      timeout=60)  # fmt: skip

    def start_registry(self, storage: Path | None = None) -> str:
        """The local OCI registry (anonymous); returns its address, ``127.0.0.1:PORT``.
        ``storage``: keep its blobs there (a cache) instead of in the stack's folder."""
        registry = LocalRegistry(self.dir / "registry", storage=storage).start()
        assert registry.process is not None
        self.state.pids["registry"] = registry.process.pid
        self.state.save()
        self.ports["registry"] = registry.port
        self.say(f"local OCI registry (docker-registry) at {registry.address}")
        return registry.address

    def start_pod_registry(self, storage: Path) -> str:
        """A second, AUTHENTICATED listener on the registry's ``storage``, on the host's
        address pods reach (their 127.0.0.1 is their own): where tuning Jobs push adapter
        images and adapter init containers pull them, with the ``kubernetes.io/
        dockerconfigjson`` written to `pod_registry_config` (user ``kaito``, a password
        made for this stack). Returns its address, ``HOST-IP:PORT``: the one reference
        that works for our pushers and pullers (plain http: the workspace controller's
        ``--plain-http-registry``) and for the kubelet (the nodes' containerd reach it
        through the anonymous loopback listener, ``--mirror-for``)."""
        import secrets

        registry = LocalRegistry(
            self.dir / "registry-pods",
            host=pod_reachable_address(),
            storage=storage,
            users={"kaito": secrets.token_urlsafe(18)},
        ).start()
        assert registry.process is not None
        self.state.pids["registry-pods"] = registry.process.pid
        self.state.save()
        self.ports["registry-pods"] = registry.port
        config = self.pod_registry_config
        config.write_text(registry.docker_config_json())
        config.chmod(0o600)
        self.say(
            f"the registry for pods at {registry.address} (basic auth; dockerconfigjson "
            f"for push/pull Secrets: {config})"
        )
        return registry.address

    @property
    def pod_registry_config(self) -> Path:
        """The pod registry's ``.dockerconfigjson`` (`start_pod_registry`)."""
        return self.dir / "registry-pods" / "dockerconfig.json"

    async def stand_in_model(self) -> Path:
        """The node agent's tiny stand-in model, built once per machine (cached)."""
        model = StandInModel(
            stand_in_model_dir(), python=DEFAULT_PYTHON, env={**CPU_ENV, "PYTHONPATH": PYTHONPATH}
        )
        if model.ready:
            self.say(f"tiny stand-in model: {model.folder} (cached)")
            return model.folder
        t0 = time.monotonic()
        self.say(f"building the tiny stand-in model into {model.folder} (once per machine)")
        try:
            folder = await model.ensure()
        except (OSError, RuntimeError) as e:
            raise ControlPlaneError(f"building the stand-in model failed: {e}") from e
        self.say(f"tiny stand-in model built in {time.monotonic() - t0:.1f}s")
        return folder

    def start_hf_hub(self, model: Path, host: str = "127.0.0.1") -> str:
        """The Hugging Face hub emulator serving ``model`` under every preset's repo at its
        pinned revision, on ``host``; returns its URL (the fetchers' ``HF_ENDPOINT``)."""
        hub_dir = self.dir / "hf-hub"
        hub_dir.mkdir(exist_ok=True)
        state_file = hub_dir / "state.json"
        pid = self.spawn(
            "hf-hub",
            ["dev", "hf-hub", "--root", str(hub_dir / "repos"), "--port", "0",
             "--host", host, "--publish-presets", str(model), "--state-file", str(state_file)],
        )  # fmt: skip
        self.wait_for("the hub emulator", lambda: _json_file(state_file) is not None, pid,
                      timeout=60)  # fmt: skip
        url = str((_json_file(state_file) or {})["url"])
        repos = preset_repos()
        gated = [name for r in repos if r.gated for name in r.presets]
        self.say(
            f"Hugging Face hub emulator at {url}: {len(repos)} preset repos at their pinned "
            "revisions, each holding the tiny stand-in model (NOT the presets' weights)"
        )
        if gated:
            self.say(
                f"  gated presets ({', '.join(gated)}) need a modelAccessSecret whose "
                f"token is {DEV_TOKEN}"
            )
        self.ports["hf-hub"] = int(url.rsplit(":", 1)[1])
        return url

    def start_node_agent(self, hf_endpoint: str, *, node_selector: str = "") -> None:
        """The kubelet stand-in: runs pods bound to the emulated GPU nodes as processes;
        their weights fetches download from ``hf_endpoint``. ``node_selector``: which Nodes
        it serves (default: every AKS agent pool's)."""
        self.say(
            "starting the node agent (runs the inference and tuning pods on CPU; weights "
            "fetches download from the hub emulator)"
        )
        pid = self.spawn(
            "node-agent",
            ["dev", "node-agent", "--kubeconfig", self.state.kubeconfig,
             "--state-dir", str(self.dir / "node-agent"), "--restart-backoff", "2",
             "--model-dir", str(stand_in_model_dir()), "--prepare-model",
             "--hf-endpoint", hf_endpoint,
             *(["--node-selector", node_selector] if node_selector else [])],
        )  # fmt: skip
        time.sleep(0.5)
        self.wait_for("the node agent to start", lambda: True, pid, timeout=5)

    def prepare_real_nodes(self) -> HostState:
        """Host tools, kubelet/kube-proxy binaries and the pause image; then record the
        host's sysctls (restored at ``down``) and switch on forwarding."""
        from kaito_dev.controlplane import ensure_binaries
        from kaito_dev.realnode import pause_archive

        t0 = time.monotonic()
        self.say("real nodes: host tools (hack/node-tools.sh) and the pause image")
        try:
            pause_archive()  # installs containerd, runc, CNI plugins, iptables when missing
        except (OSError, RuntimeError) as e:
            raise ControlPlaneError(f"real nodes: host tools: {e}") from e
        bin_dir = ensure_binaries()
        for binary in ("kubelet", "kube-proxy"):
            if not (bin_dir / binary).exists():
                raise ControlPlaneError(f"{bin_dir / binary} missing: hack/local-cluster.sh build")
        if os.geteuid() != 0:
            raise ControlPlaneError("real nodes need root (`kaito dev up --nodes agent` does not)")
        host = HostState.capture(self.dir / "host-state.json")
        host.prepare()
        self.say(f"real nodes: tools ready, host state recorded ({time.monotonic() - t0:.1f}s)")
        return host

    def build_images(self, registry: str, names: Sequence[str] | None = None) -> dict[str, str]:
        """Build (buildah, cached layers) and push the images real nodes run (``names``,
        default `NODE_IMAGES`)."""
        from kaito_dev.images import Builder, build_all

        t0 = time.monotonic()
        names = names or NODE_IMAGES
        self.say(f"images {', '.join(names)}: build or reuse, push to {registry}")
        built = build_all(registry, names, builder=Builder(say=self.say), revision=LOCAL_REVISION)
        self.say(f"images pushed in {time.monotonic() - t0:.1f}s")
        return {b.spec.name: b.reference for b in built}

    def start_kube_proxy(self) -> None:
        """One kube-proxy (iptables) for the whole cluster: Services get ClusterIPs."""
        from kaito_dev.realnode import KubeProxy

        proxy = KubeProxy(
            kubeconfig=self.state.kubeconfig,
            hostname="kaito-dev-proxy",
            log_dir=self.logs,
            bind_address=pod_reachable_address(),
        ).start()
        assert proxy.pid is not None
        self.state.pids["kube-proxy"] = proxy.pid
        self.state.save()
        self.say("kube-proxy (iptables) serves the Services' ClusterIPs on this host")

    def start_cluster_dns(self) -> str:
        """The cluster domain's DNS server (`kaito_dev.realnode.clusterdns`, CoreDNS's part)
        on UDP 53 of the address pods reach; returns that address (``--cluster-dns``)."""
        address = pod_reachable_address()
        state_file = self.dir / "cluster-dns.json"
        pid = self.spawn(
            "cluster-dns",
            ["dev", "cluster-dns", "--kubeconfig", self.state.kubeconfig, "--host", address,
             "--state-file", str(state_file)],
        )  # fmt: skip
        self.wait_for("the cluster DNS", lambda: _json_file(state_file) is not None, pid,
                      timeout=30)  # fmt: skip
        self.say(f"cluster DNS at {address}:53: pods resolve <svc>.<ns>.svc.cluster.local")
        return address

    async def apply_identities(self) -> dict[str, str]:
        """CRDs, deploy/'s namespace, ServiceAccounts and RBAC, for controllers that run as
        host processes; returns each controller's ServiceAccount kubeconfig."""
        ids = self.dir / "identities"
        ids.mkdir(exist_ok=True)
        async with Client(await ClientConfig.from_kubeconfig(self.state.kubeconfig)) as client:
            crds = await install_crds(client)
            self.say(f"installed CRDs: {', '.join(crds)}")
            await asyncio.to_thread(identities.apply_identities, self.state.kubeconfig)
            self.say("applied deploy/'s namespace, ServiceAccounts and RBAC")
            return {
                ident.component: await identities.service_account_kubeconfig(
                    client, self.state.kubeconfig, ident, ids / f"{ident.component}.kubeconfig"
                )
                for ident in identities.CONTROLLERS
            }

    async def start_real_nodes(self, *, in_cluster: bool = False) -> RealNodes:
        """Everything real nodes need, whoever runs the controllers: the host prepared, the
        registry and its pod listener, the images (``controller`` too when it runs
        ``in_cluster``), the hub, kube-proxy, the cluster DNS and the AKS emulator booting
        real nodes (listening where pods reach it when the controllers are pods)."""
        self.prepare_real_nodes()
        storage = cache_dir() / "registry"
        registry = self.start_registry(storage=storage)
        pod_registry = self.start_pod_registry(storage=storage)
        names = (*NODE_IMAGES, "controller") if in_cluster else NODE_IMAGES
        images = await asyncio.to_thread(self.build_images, registry, names)
        address = pod_reachable_address()
        hub = self.start_hf_hub(await self.stand_in_model(), host=address)
        self.start_kube_proxy()
        dns = self.start_cluster_dns()
        arm_env = self.start_aks_emulator(
            create_latency=0.5,
            registry=registry,
            mirror_for=[pod_registry],
            cluster_dns=dns,
            extra=("--host", address) if in_cluster else (),
        )
        return RealNodes(
            registry=registry,
            pod_registry=pod_registry,
            pod_registry_config=str(self.pod_registry_config),
            images=images,
            hf_endpoint=hub,
            cluster_dns=dns,
            arm_env=arm_env,
            node_dir=str(self.node_dir),
        )

    def record(self, info: dict[str, Any]) -> dict[str, Any]:
        """Write ``stack.json`` (``info`` plus the logs' folder and the ports) and return it."""
        info = {**info, "logs": str(self.logs), "ports": self.ports}
        (self.dir / "stack.json").write_text(json.dumps(info, indent=2))
        return info


NODE_IMAGES = ("inference", "tuning", "curl")
LOCAL_REVISION = "local"
"""The stack's images' revision label: fixed, so a commit alone rebuilds and pushes nothing."""
"""What pods on real nodes run: the server and fetcher, the tuning job, the demo's client."""


NODES_ROOT = Path("/var/lib/kaito-dev")


def node_dir_for(state_dir: Path) -> Path:
    """The real nodes' folders of the stack in ``state_dir``: a short path of its own
    (``/var/lib/kaito-dev/<hash>``), because the kubelet puts unix sockets under its
    root folder and a socket path may not exceed 107 bytes (a pytest tmp_path would)."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    return NODES_ROOT / digest


def pod_reachable_address() -> str:
    """This host's address as pods see it (their 127.0.0.1 is their own): the source
    address of the host's route towards the pod network."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.244.0.1", 9))  # no packet is sent: this only picks a route
            address = str(s.getsockname()[0])
        except OSError as e:
            raise ControlPlaneError(f"no route from this host towards the pods: {e}") from e
    if address.startswith("127."):
        raise ControlPlaneError("this host has no address but loopback: pods cannot reach it")
    return address


def cache_dir() -> Path:
    """Where built artefacts outlive a cluster: ``$KAITO_CACHE`` or ``~/.cache/kaito``."""
    return Path(os.environ.get("KAITO_CACHE") or Path.home() / ".cache" / "kaito")


def _json_file(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None while it is missing or still being written."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stand_in_model_dir() -> Path:
    """The tiny stand-in model the node agent and the hub emulator share."""
    return cache_dir() / "tiny-model"


def _http_ok(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


CONTROLLER_MODES = ("process", "in-cluster")


async def start_stack(
    state: ControlPlaneState,
    *,
    say: Callable[[str], None],
    nodes: str = "real",
    controllers: str = "process",
) -> dict[str, Any]:
    """CRDs, RBAC, the registry, the AKS emulator, the hub emulator, both controllers (as
    their ServiceAccounts) and the nodes (``real``, or the node agent with ``agent``);
    returns what the demo prints (logs, metrics ports, the hub's URL). ``controllers``:
    ``process`` (host processes), or ``in-cluster`` (pods on a system node, installed by
    ``kubectl apply -k``: `kaito_dev.incluster`; real nodes only, and the control plane
    must have been started with ``pod_address``)."""
    if nodes not in ("real", "agent"):
        raise ValueError(f"nodes: {nodes!r} is not one of real, agent")
    if controllers not in CONTROLLER_MODES:
        raise ValueError(f"controllers: {controllers!r} is not one of process, in-cluster")
    if controllers == "in-cluster" and nodes != "real":
        raise ValueError("controllers: in-cluster needs nodes: real (pods need a kubelet)")
    stack = Stack(state, say=say)
    if nodes == "real":
        real = await stack.start_real_nodes(in_cluster=controllers == "in-cluster")
        if controllers == "in-cluster":
            from kaito_dev.incluster import install_in_cluster

            installed = await install_in_cluster(
                state,
                say=say,
                registry=real.registry,
                workspace_controller=real.workspace_controller_settings(),
                arm_env=real.arm_env,
                cluster_dns=real.cluster_dns,
            )
            return stack.record(real.info(controllers="in-cluster", **installed))
    kubeconfigs = await stack.apply_identities()
    if nodes == "agent":
        registry = stack.start_registry()
        arm_env = stack.start_aks_emulator(create_latency=0.5)
        hub = stack.start_hf_hub(await stack.stand_in_model())
        stack.start_gpu_provisioner(arm_env, kubeconfigs["gpu-provisioner"])
        stack.start_workspace_controller(kubeconfigs["workspace-controller"])
        stack.start_node_agent(hub)
        return stack.record(
            {"nodes": "agent", "controllers": "process", "arm_base_url": arm_env["ARM_BASE_URL"],
             "registry": registry, "hf_endpoint": hub}
        )  # fmt: skip
    stack.start_gpu_provisioner(real.arm_env, kubeconfigs["gpu-provisioner"])
    stack.start_workspace_controller(
        kubeconfigs["workspace-controller"], settings=real.workspace_controller_settings()
    )
    return stack.record(real.info(controllers="process"))


@dataclass(frozen=True)
class RealNodes:
    """What `Stack.start_real_nodes` started: the parts both controller modes share."""

    registry: str
    """The anonymous registry on the host's loopback (the nodes' containerd pull there)."""
    pod_registry: str
    """The authenticated listener pods reach (`Stack.start_pod_registry`)."""
    pod_registry_config: str
    images: dict[str, str]
    hf_endpoint: str
    cluster_dns: str
    arm_env: dict[str, str]
    node_dir: str

    def workspace_controller_settings(self) -> dict[str, str]:
        """The workspace controller's settings for this machine, as the environment its
        flags default from: a process gets them in its environment, the in-cluster
        install in its ConfigMap (`kaito_dev.incluster.write_overlay`)."""
        from kaito.controllers.workspace.cli import (
            HF_ENDPOINT_ENV,
            IMAGE_REGISTRY_ENV,
            PLAIN_HTTP_REGISTRIES_ENV,
        )

        return {
            IMAGE_REGISTRY_ENV: self.registry,
            HF_ENDPOINT_ENV: self.hf_endpoint,
            PLAIN_HTTP_REGISTRIES_ENV: self.pod_registry,
        }

    def info(self, **more: Any) -> dict[str, Any]:
        """``stack.json``'s content (what the demo and the tests read)."""
        return {
            "nodes": "real",
            "arm_base_url": self.arm_env.get("ARM_BASE_URL", ""),
            "registry": self.registry,
            "pod_registry": self.pod_registry,
            "pod_registry_config": self.pod_registry_config,
            "images": self.images,
            "hf_endpoint": self.hf_endpoint,
            "cluster_dns": self.cluster_dns,
            "node_dir": self.node_dir,
            "workspace_controller": self.workspace_controller_settings(),
            **more,
        }

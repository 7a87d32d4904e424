"""``kaito dev ...`` (``python -m kaito_dev``): the local development cluster and its tools.

``kaito dev`` is this package's command. The production ``kaito`` command (the
controller image's entrypoint) does not contain it: `kaito.cli` hands ``kaito dev ...``
to ``python -m kaito_dev`` as a separate process, so the controllers never import the
development tooling and the image does not ship it.

``up`` builds-or-reuses the control-plane binaries (first build ~10 min, with progress),
starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler on free loopback
ports under ``.kaito/dev/``, then the stack (`kaito_dev.stack`) and leaves them running.
``--nodes real`` (default): the AKS emulator boots real nodes (containerd + kubelet)
running the project's images, and KAITO is installed as users install it, ``kubectl
apply -k`` of deploy/ onto a system node (``--controllers in-cluster``, the default with
real nodes; ``--controllers process`` runs both controllers as host processes instead);
``--nodes agent``: the fallback without real nodes (the node agent runs the pods as
local processes, the controllers are host processes). ``down`` stops the real nodes (pods,
containers, state, cgroups, network), every process by PID, restores the host's
sysctls and iptables, and fails naming anything left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaito_dev.controlplane import ControlPlane, ControlPlaneError, ControlPlaneState, stop_pids
from kaito_dev.demo import DemoResult, run_quick_start
from kaito_dev.stack import start_stack

DEFAULT_DIR = Path(".kaito/dev")


def add_commands(sub: Any) -> None:
    up = sub.add_parser("up", help="start the local cluster (stays up until `kaito dev down`)")
    up.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="state directory (default .kaito/dev)"
    )
    _nodes_argument(up)
    _controllers_argument(up)
    _audit_argument(up)
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop the local cluster and delete its data")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    down.set_defaults(func=cmd_down)
    demo = sub.add_parser(
        "demo", help="`up`, then apply the quick start's Workspace and chat with it"
    )
    demo.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    demo.add_argument("--down", action="store_true", help="tear everything down at the end")
    _nodes_argument(demo)
    _controllers_argument(demo)
    _audit_argument(demo)
    demo.set_defaults(func=cmd_demo)
    status = sub.add_parser("status", help="print the running cluster's state")
    status.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    status.set_defaults(func=cmd_status)
    from kaito_dev import images
    from kaito_dev.nodeagent import cli as node_agent_cli

    images.add_arguments(
        sub.add_parser("images", help="build the three images with buildah and push them")
    )

    node_agent_cli.add_arguments(
        sub.add_parser("node-agent", help="run pods bound to emulated GPU nodes as local processes")
    )
    from kaito_dev.aks import cli as aks_cli
    from kaito_dev.hfhub import cli as hf_hub_cli

    aks_cli.add_arguments(
        sub.add_parser(
            "aks-emulator", help="serve an emulated AKS agent-pool API that registers Nodes"
        )
    )

    hf_hub_cli.add_arguments(
        sub.add_parser("hf-hub", help="serve a Hugging Face hub emulator (HF_ENDPOINT) with faults")
    )
    from kaito_dev.realnode import clusterdns

    clusterdns.add_arguments(
        sub.add_parser("cluster-dns", help="serve the cluster domain's DNS to real nodes' pods")
    )
    from kaito_dev.chaos import cli as chaos_cli

    chaos_cli.add_arguments(
        sub.add_parser(
            "chaos", help="seeded Workspace cycles under SIGKILLs and ARM fault storms (a report)"
        )
    )


def _nodes_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nodes",
        choices=("real", "agent"),
        default="real",
        help="real: every AKS VM is a real node (containerd + kubelet 1.20, root; default); "
        "agent: FALLBACK without real nodes, the node agent runs pods as local processes",
    )


def _controllers_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--controllers",
        choices=("process", "in-cluster"),
        default=None,
        help="in-cluster (the default with --nodes real): `kubectl apply -k` of deploy/ (a "
        "local overlay), two replicas each as pods on a system node; process (the default "
        "with --nodes agent): both controllers run as host processes with their "
        "ServiceAccounts' tokens",
    )


def controllers_mode(args: argparse.Namespace) -> str:
    """``--controllers``, defaulted from ``--nodes`` (pods need real nodes)."""
    chosen: str | None = getattr(args, "controllers", None)
    if chosen is None:
        return "in-cluster" if args.nodes == "real" else "process"
    if chosen == "in-cluster" and args.nodes != "real":
        raise ValueError("--controllers in-cluster needs --nodes real (pods need a kubelet)")
    return chosen


def _audit_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audit",
        action="store_true",
        help="the apiserver writes an audit log of every write request (<dir>/audit.log, "
        "with each sender's User-Agent): tests prove with it who wrote what, and when",
    )


def _progress(t0: float) -> Any:
    def say(msg: str) -> None:
        print(f"[kaito dev {time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    return say


def cmd_up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    say = _progress(t0)
    state_dir: Path = args.dir.resolve()
    if (state_dir / "state.json").exists():
        say(f"a cluster is already recorded in {state_dir}; stopping it first")
        cmd_down(args)
    try:
        real = args.nodes == "real"
        controllers = controllers_mode(args)
        state_dir.mkdir(parents=True, exist_ok=True)
        pod_address = None
        if controllers == "in-cluster":
            from kaito_dev.stack import pod_reachable_address

            pod_address = pod_reachable_address()  # in-cluster config reaches it there
        state = ControlPlane(
            state_dir, real_nodes=real, pod_address=pod_address, audit=args.audit
        ).start(progress=say)
        info = asyncio.run(start_stack(state, say=say, nodes=args.nodes, controllers=controllers))
    except (RuntimeError, OSError, ValueError) as e:  # ControlPlaneError, NodeBootError
        say(f"FAILED: {e}")
        cmd_down(args)
        return 1
    nodes = (
        "real nodes (each AKS VM: containerd + kubelet + emulated-GPU device plugin), kube-proxy"
        if real
        else "node agent (FALLBACK: pods run as local processes)"
    )
    where = (
        "pods on the system node, kubectl apply -k " + info["overlay"]
        if info.get("controllers") == "in-cluster"
        else "as their ServiceAccounts"
    )
    print(
        f"\nThe local KAITO stack is up: control plane, CRDs, RBAC, OCI registry, AKS emulator,\n"
        f"Hugging Face hub emulator (serving a tiny STAND-IN model under the presets' repos),\n"
        f"gpu-provisioner and workspace controller ({where}), {nodes}.\n"
        f"  HF_ENDPOINT={info['hf_endpoint']}\n"
        f"  export KUBECONFIG={state.kubeconfig}\n"
        f"  kubectl get workspace,machines,nodes\n"
        f"  component logs: {info['logs']}\n"
        f"Stop it with: make demo-down\n"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    say = _progress(time.monotonic())
    if cmd_up(args) != 0:
        return 1
    state = ControlPlaneState.load(args.dir.resolve())
    logs = Path(state.data_dir) / "logs"
    try:
        result = asyncio.run(run_quick_start(state, say=say))
    except (TimeoutError, ControlPlaneError, RuntimeError, OSError) as e:
        say(f"FAILED: {e}; component logs in {logs}")
        if args.down:
            cmd_down(args)
        return 1
    _summarize(state, result, say)
    if args.down:
        cmd_down(args)
    else:
        print(
            f"\nThe cluster stays up. export KUBECONFIG={state.kubeconfig}\n"
            f"  kubectl get workspace,machines,nodes,pods -A\n"
            f"  component logs: {logs}\n"
            f"Stop it with: make demo-down"
        )
    return 0


def _summarize(state: ControlPlaneState, result: DemoResult, say: Any) -> None:
    t = result.timeline
    kaito = t.kaito_seconds()
    marks = ", ".join(
        f"{k} +{v:.1f}s" for k, v in t.marks.items() if not k.startswith("Machine ws")
    )
    say(f"timeline from apply: {marks}")
    if kaito is not None:
        server = t.marks["pod Ready"] - t.marks["server process started"]
        say(
            f"apply -> WORKSPACEREADY {t.marks['WorkspaceReady']:.1f}s, of which the inference "
            f"server's own start-up {server:.1f}s: KAITO's part {kaito:.1f}s"
        )
    info = json.loads((Path(state.data_dir) / "stack.json").read_text())
    ports = info.get("ports", {})
    pod_ip = result.pod["status"]["podIP"]
    controller_pods = _controller_pods(state) if info.get("controllers") == "in-cluster" else []
    if controller_pods:
        say("kubectl get pods -n kaito-system (the controllers, installed by kubectl apply -k):")
        for line in controller_pods:
            say(f"  {line}")
    say("metrics (Prometheus text format):")
    for component in ("gpu-provisioner", "workspace-controller"):
        port = ports.get(f"{component}-metrics")
        if port:
            say(f"  {component}: http://127.0.0.1:{port}/metrics")
    for line in controller_pods[1:]:
        name, _, _, ip = line.split()[:4]
        say(f"  {name}: http://{ip}:8080/metrics")
    say(f"  inference server: http://{pod_ip}:5000/metrics (vllm:* and the server's own)")
    say("  scrape config for a cluster: deploy/monitoring/")


def _controller_pods(state: ControlPlaneState) -> list[str]:
    """``kubectl get pods -n kaito-system``: name, phase, image, pod IP, node (header first)."""
    import subprocess

    columns = (
        "NAME:.metadata.name,STATUS:.status.phase,IMAGE:.spec.containers[0].image,"
        "IP:.status.podIP,NODE:.spec.nodeName"
    )
    proc = subprocess.run(
        ["kubectl", f"--kubeconfig={state.kubeconfig}", "get", "pods", "-n", "kaito-system",
         "--sort-by=.metadata.name", "-o", f"custom-columns={columns}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return proc.stdout.splitlines() if proc.returncode == 0 else [proc.stderr.strip()]


def cmd_down(args: argparse.Namespace) -> int:
    state_dir: Path = args.dir.resolve()
    try:
        state = ControlPlaneState.load(state_dir)
    except FileNotFoundError:
        print(f"no cluster recorded in {state_dir}")
        return 0
    # The AKS emulator first (it boots nodes), then its VMs, then everything else.
    pids = dict(state.pids)
    stop_pids({k: v for k, v in pids.items() if k == "aks-emulator"})
    from kaito_dev.incluster import stop_system_node

    left = stop_system_node(state_dir)  # the controllers' pods, with --controllers in-cluster
    left += _stop_real_nodes(state_dir)
    stop_pids({k: v for k, v in pids.items() if k != "aks-emulator"})
    left += _restore_host(state_dir)
    import shutil

    shutil.rmtree(state_dir, ignore_errors=True)
    print(f"stopped {', '.join(state.pids)}; removed {state_dir}")
    if left:
        print("LEFT BEHIND:\n  " + "\n  ".join(left))
        return 1
    return 0


def _stop_real_nodes(state_dir: Path) -> list[str]:
    """Stop every real node of the stack (what the AKS emulator booted); return what any
    of them left on the host."""
    from kaito_dev.realnode import stop_and_check_all
    from kaito_dev.stack import NODES_ROOT, node_dir_for

    node_dir = node_dir_for(state_dir)
    if not node_dir.is_dir():
        return []
    left = stop_and_check_all(node_dir, say=lambda name: print(f"stopped real node {name}"))
    with contextlib.suppress(OSError):
        NODES_ROOT.rmdir()  # only when no other stack uses it
    return left


def _restore_host(state_dir: Path) -> list[str]:
    """Put back the sysctls and iptables the kubelets and kube-proxy changed."""
    record = state_dir / "host-state.json"
    if not record.exists():
        return []
    from kaito_dev.realnode import HostState

    host = HostState.capture(record)
    host.restore()
    left = host.leftovers()
    print("restored the host's sysctls and removed the KUBE-* iptables chains")
    return [f"host: {x}" for x in left]


def cmd_status(args: argparse.Namespace) -> int:
    try:
        state = ControlPlaneState.load(args.dir.resolve())
    except FileNotFoundError:
        print("no cluster is running")
        return 1
    print(
        json.dumps(
            {"kubeconfig": state.kubeconfig, "server": state.server, "pids": state.pids}, indent=2
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaito dev", description="the local development cluster and its tools"
    )
    add_commands(parser.add_subparsers(dest="dev_command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from kaito.runtime import log as runtime_log

    runtime_log.configure()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

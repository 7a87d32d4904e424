"""``kaito dev up|down|status``: the local development cluster.

``up`` builds-or-reuses the control-plane binaries (first build ~10 min, with progress),
starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler on free loopback
ports under ``.kaito/dev/`` and leaves them running; ``down`` stops them by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from kaito.dev.controlplane import ControlPlane, ControlPlaneError, ControlPlaneState, stop_pids
from kaito.dev.demo import run_quick_start
from kaito.dev.stack import start_stack

DEFAULT_DIR = Path(".kaito/dev")


def add_commands(sub: Any) -> None:
    up = sub.add_parser("up", help="start the local cluster (stays up until `kaito dev down`)")
    up.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="state directory (default .kaito/dev)"
    )
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop the local cluster and delete its data")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    down.set_defaults(func=cmd_down)
    demo = sub.add_parser("demo", help="`up`, then apply the quick start's Workspace")
    demo.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    demo.add_argument("--down", action="store_true", help="tear everything down at the end")
    demo.set_defaults(func=cmd_demo)
    status = sub.add_parser("status", help="print the running cluster's state")
    status.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    status.set_defaults(func=cmd_status)


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
        state = ControlPlane(state_dir).start(progress=say)
        info = asyncio.run(start_stack(state, say=say))
    except ControlPlaneError as e:
        say(f"FAILED: {e}")
        cmd_down(args)
        return 1
    print(
        f"\nThe local KAITO stack is up: control plane, CRDs, AKS emulator, gpu-provisioner,\n"
        f"workspace controller with its webhook.\n"
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
    try:
        node = asyncio.run(run_quick_start(state, say=say))
    except (TimeoutError, ControlPlaneError) as e:
        say(f"FAILED: {e}; logs in {Path(state.data_dir) / 'logs'}")
        return 1
    finally:
        if args.down:
            cmd_down(args)
    labels = node["metadata"].get("labels") or {}
    say(
        f"done: workspace-phi-3-mini is ResourceReady on {node['metadata']['name']} "
        f"({labels.get('node.kubernetes.io/instance-type')}); "
        f"`kubectl get workspace` shows it"
    )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_dir: Path = args.dir.resolve()
    try:
        state = ControlPlaneState.load(state_dir)
    except FileNotFoundError:
        print(f"no cluster recorded in {state_dir}")
        return 0
    stop_pids(state.pids)
    import shutil

    shutil.rmtree(state_dir, ignore_errors=True)
    print(f"stopped {', '.join(state.pids)}; removed {state_dir}")
    return 0


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

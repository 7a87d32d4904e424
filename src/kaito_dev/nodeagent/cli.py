"""``kaito dev node-agent``: run the node agent until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from kaito_dev.nodeagent.agent import DEFAULT_NODE_SELECTOR, DEFAULT_PYTHON

DEFAULT_STATE_DIR = Path(".kaito/dev/node-agent")


def add_arguments(p: Any) -> None:
    p.add_argument("--kubeconfig", default=None, help="default: in-cluster, else $KUBECONFIG")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"pod folders and the stand-in model (default {DEFAULT_STATE_DIR})",
    )
    p.add_argument(
        "--python",
        default=DEFAULT_PYTHON,
        help=f"containers' interpreter (default {DEFAULT_PYTHON})",
    )
    p.add_argument(
        "--node-selector",
        default=DEFAULT_NODE_SELECTOR,
        help=f"label selector of the Nodes to serve (default {DEFAULT_NODE_SELECTOR})",
    )
    p.add_argument(
        "--restart-backoff",
        type=float,
        default=10.0,
        help="first crash-loop backoff in seconds, doubling to 300 (default 10)",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="where the tiny stand-in model is built and kept (default <state-dir>/tiny-model)",
    )
    p.add_argument(
        "--prepare-model",
        action="store_true",
        help="build the stand-in model at start, not when the first pod needs it",
    )
    p.add_argument(
        "--hf-endpoint",
        default=None,
        help="the Hugging Face hub weights fetches download from (their HF_ENDPOINT; "
        "`kaito dev up` passes its hub emulator); default none: a fetch copies the "
        "stand-in model into the node's cache",
    )
    p.set_defaults(func=cmd_node_agent)


def cmd_node_agent(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from kaito.runtime.client import Client, ClientConfig
    from kaito.runtime.entrypoint import run_until_stopped
    from kaito_dev.nodeagent.agent import NodeAgent

    async with Client(await ClientConfig.load(args.kubeconfig)) as client:
        agent = NodeAgent(
            client,
            state_dir=args.state_dir,
            python=args.python,
            node_selector=args.node_selector,
            restart_backoff=args.restart_backoff,
            model_dir=args.model_dir,
            prepare_model=args.prepare_model,
            hf_endpoint=args.hf_endpoint,
        )
        return await run_until_stopped(agent.run, agent.stop)

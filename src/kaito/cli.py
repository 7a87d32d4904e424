"""The ``kaito`` command: entry points for the two controllers and the model tools.

kaito workspace-controller         the workspace controller (its Deployment's entrypoint)
kaito gpu-provisioner              the gpu-provisioner (its Deployment's entrypoint)
kaito model package                a folder of weights -> a model image in a registry
kaito dev ...                      the development tools, when installed (``make setup``)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from kaito.runtime import log as runtime_log


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaito", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)

    # Listed for --help only: main() hands ``kaito dev ...`` over before parsing.
    sub.add_parser("dev", help="the local development cluster and its tools (`kaito dev --help`)")
    from kaito.provisioner import cli as provisioner_cli

    provisioner_cli.add_commands(sub)
    from kaito.controllers.workspace import cli as workspace_cli

    workspace_cli.add_commands(sub)
    from kaito.model import cli as model_cli

    model_cli.add_commands(sub)
    return parser


def _exec_dev_tools(dev_args: Sequence[str]) -> int:
    """Hand ``kaito dev ...`` to the development package as its own process.

    A process boundary rather than an import, as kubectl hands ``kubectl foo`` to a
    ``kubectl-foo`` plugin: the controllers never load development code, and the controller
    image, which does not ship it, says so instead of failing on an import.
    """
    if importlib.util.find_spec("kaito_dev") is None:
        print(
            "kaito dev: the development tools (package kaito_dev) are not installed here; "
            "they come with a source checkout (`make setup`)",
            file=sys.stderr,
        )
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "kaito_dev", *dev_args])
    return 0  # not reached: execv replaces this process


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dev"]:
        return _exec_dev_tools(argv[1:])
    runtime_log.configure()
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

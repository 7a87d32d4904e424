"""The ``kaito`` command: entry points for the two controllers and the dev tools.

kaito dev up | down | status       the local development cluster (``make demo``)
kaito model package                a folder of weights -> a model image in a registry
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kaito.runtime import log as runtime_log


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaito", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="the local development cluster")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    from kaito.dev import cli as dev_cli

    dev_cli.add_commands(dev_sub)
    from kaito.provisioner import cli as provisioner_cli

    provisioner_cli.add_commands(sub)
    provisioner_cli.add_dev_commands(dev_sub)
    from kaito.controllers.workspace import cli as workspace_cli

    workspace_cli.add_commands(sub)
    from kaito.model import cli as model_cli

    model_cli.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    runtime_log.configure()
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""Committed manifests that are generated: stable YAML, and write-or-check.

The one place where generators meet the files they own (the CRDs in ``deploy/crds``,
the webhook's ``deploy/workspace-controller/webhook.yaml``): the same YAML style, and a
stale file names the command that regenerates it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["to_yaml", "write_or_check"]


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated sub-trees in full: ``&id001`` anchors make manifests unreadable."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(obj: Any, *, header: str = "") -> str:
    """Stable YAML for committed manifests (insertion order, no anchors, wide lines)."""
    body = yaml.dump(obj, Dumper=_NoAliasDumper, sort_keys=False, width=100)
    prefix = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return prefix + "---\n" + body


def write_or_check(path: Path, want: str, *, check: bool, command: str) -> int:
    """Write a generated manifest, or with ``check`` exit 1 if the committed one differs.

    The one place where generators meet the files they own (the CRDs, the webhook's
    manifest): a stale file names the command that regenerates it.
    """
    if check:
        if not path.exists() or path.read_text() != want:
            print(f"{path} is stale: run `{command}`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(want)
    print(f"wrote {path}")
    return 0

"""Discovery of LoRA adapters under the adapters directory (`/mnt/adapter` in pods).

Each subdirectory holding an `adapter_config.json` is one adapter, served as a model id
equal to the directory name. Its strength comes from the environment variable of the
same name (Kaito's convention, set from the Workspace's adapter list), default 1.0.
The directory is rescanned on demand, so an adapter written by a tuning job after the
server started is served without a restart.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import structlog

from .engines.base import Adapter

log = structlog.get_logger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def adapter_rank(path: Path) -> int:
    """The LoRA rank `r` in an adapter's config (0 when unreadable)."""
    try:
        config = json.loads((path / "adapter_config.json").read_text())
        return int(config.get("r", 0))
    except (OSError, ValueError, TypeError):
        return 0


def _strength(name: str, env: Mapping[str, str]) -> float:
    raw = env.get(name)
    if raw is None:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        log.warning("adapter strength ignored", adapter=name, value=raw, reason="not a number")
        return 1.0
    if not 0.0 <= value <= 10.0:
        log.warning("adapter strength ignored", adapter=name, value=raw, reason="outside [0, 10]")
        return 1.0
    return value


def scan(root: Path | None, env: Mapping[str, str] | None = None) -> dict[str, Adapter]:
    """Adapters found under `root`, by name, sorted; an absent root has none."""
    if root is None or not root.is_dir():
        return {}
    env = os.environ if env is None else env
    found: dict[str, Adapter] = {}
    for entry in sorted(root.iterdir()):
        if not (entry / "adapter_config.json").is_file():
            continue
        if not _NAME.match(entry.name):
            log.warning("adapter skipped", path=str(entry), reason="name is not a valid model id")
            continue
        found[entry.name] = Adapter(
            name=entry.name, path=entry.resolve(), strength=_strength(entry.name, env)
        )
    return found

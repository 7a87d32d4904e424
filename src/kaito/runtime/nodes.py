"""Reading a Node the way the scheduler and kubelet do."""

from __future__ import annotations

from kaito.runtime.meta import Obj

__all__ = ["node_ready"]


def node_ready(node: Obj) -> bool:
    """True when the Node's ``Ready`` condition is True (kubelet heartbeats it)."""
    for cond in node.get("status", {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False

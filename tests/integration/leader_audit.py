"""Reading the apiserver's audit log for leader-election tests (who wrote what, when).

The control plane started with ``audit=True`` (`kaito_dev.controlplane`; ``kaito dev up
--audit``) logs every write with the User-Agent of the process that sent it. Both
controllers send ``<component>/<version> <identity>``, the identity being their Lease
holderIdentity (`kaito.runtime.entrypoint.user_agent`), so the log tells the replicas
apart: which one wrote, when it took a Lease over, and whether a leader that lost its
Lease wrote anything afterwards. Used by the process-based failover test
(tests/integration/workspace_controller/test_leader_failover.py) and the in-cluster one
(tests/integration/test_incluster.py).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

Obj = dict[str, Any]

JITTER = 1.2
"""client-go's (and `kaito.runtime.leaderelection`'s) retry jitter factor."""


def takeover_bound(lease: float, retry: float, slack: float) -> float:
    """Fault -> new holder's acquire. A follower sees the last renewal at its next poll (at
    most (1+jitter) x retry after it), waits the lease duration from then on its own clock,
    and takes over at the poll after that (another (1+jitter) x retry at most); ``slack``
    for scheduling on a loaded machine."""
    return lease + 2 * (1 + JITTER) * retry + slack


def ts(micro_time: str) -> float:
    """Epoch seconds of a Kubernetes (Micro)Time or an ISO log timestamp."""
    return datetime.fromisoformat(micro_time.replace("Z", "+00:00")).timestamp()


def read_audit(path: str, identities: set[str]) -> list[Obj]:
    """The audit events of the requests sent by these identities (their User-Agent)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if any(i in line for i in identities):
                event = json.loads(line)
                if str(event.get("userAgent", "")).rsplit(" ", 1)[-1] in identities:
                    out.append(event)
    return out


def by_agent(audit: list[Obj], identity: str) -> list[Obj]:
    return [e for e in audit if str(e.get("userAgent", "")).endswith(" " + identity)]


def received(event: Obj) -> float:
    return ts(event["requestReceivedTimestamp"])


def ok(event: Obj) -> bool:
    return int(event.get("responseStatus", {}).get("code", 0)) < 300


def is_lease(event: Obj, lease: str) -> bool:
    ref = event.get("objectRef") or {}
    return bool(ref.get("resource") == "leases" and ref.get("name") == lease)


def takeover(
    audit: list[Obj], lease: str, old: str, new: str, *, may_write: frozenset[str] = frozenset()
) -> tuple[float, float]:
    """(when ``new`` first wrote ``lease`` successfully, how long before that ``old`` had
    last renewed it), from the audit log; asserts that ``new`` wrote nothing but its
    attempts at the Lease before it held it (a follower does not act), nor any resource in
    ``may_write`` (what every replica does, leader or not: a webhook's set-up)."""
    new_writes = by_agent(audit, new)
    acquired_at = min(received(e) for e in new_writes if is_lease(e, lease) and ok(e))
    before = [
        e
        for e in new_writes
        if received(e) < acquired_at
        and not is_lease(e, lease)
        and (e.get("objectRef") or {}).get("resource") not in may_write
    ]
    assert before == [], f"{new} wrote as a follower: {before}"
    renewals = [received(e) for e in by_agent(audit, old) if is_lease(e, lease) and ok(e)]
    assert renewals, f"no Lease write by {old} in the audit log"
    return acquired_at, acquired_at - max(r for r in renewals if r < acquired_at)


def writes_after(audit: list[Obj], identity: str, at: float) -> list[tuple[str, str, Any]]:
    """Every write request ``identity`` sent from ``at`` on, successful or not."""
    return [
        (e["verb"], e["requestURI"], e.get("responseStatus", {}).get("code"))
        for e in by_agent(audit, identity)
        if received(e) >= at
    ]

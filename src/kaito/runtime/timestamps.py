"""Kubernetes timestamps: RFC 3339 in UTC with second precision, as metav1.Time writes them.

``lastTransitionTime``, ``creationTimestamp``, Events' ``firstTimestamp``: the apiserver
stores seconds, so a finer time written here would compare unequal to the same time read
back and make a status look changed when it is not.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_rfc3339", "now_rfc3339", "parse_rfc3339"]

_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def now_rfc3339() -> str:
    """The current time as metav1.Time serialises it (``2026-12-06T15:40:00Z``)."""
    return datetime.now(UTC).strftime(_FORMAT)


def format_rfc3339(epoch_seconds: float) -> str:
    """An epoch time as metav1.Time serialises it."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime(_FORMAT)


def parse_rfc3339(value: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 time; None for a missing or malformed one."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

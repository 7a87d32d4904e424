"""API errors with the apiserver's own status, reason and message.

The apiserver answers failures with a ``Status`` object; we keep its ``reason`` and
``message`` so conditions and logs can quote the server instead of paraphrasing it.
Subclasses exist for the statuses controllers branch on (404, 409, 410, 429), so
callers write ``except NotFound`` rather than comparing integers.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A non-2xx answer from the apiserver."""

    def __init__(
        self,
        status: int,
        *,
        reason: str = "",
        message: str = "",
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}
        self.retry_after = retry_after
        super().__init__(f"{status} {reason}: {message}" if reason or message else str(status))

    @staticmethod
    def from_response(status: int, body: Any, retry_after: float | None = None) -> ApiError:
        reason, message = "", ""
        if isinstance(body, dict):
            reason = str(body.get("reason", ""))
            message = str(body.get("message", ""))
        elif body:
            message = str(body)[:500]
        cls = _BY_STATUS.get(status, ApiError)
        if status == 409 and reason == "AlreadyExists":
            cls = AlreadyExists
        return cls(
            status,
            reason=reason,
            message=message,
            body=body if isinstance(body, dict) else None,
            retry_after=retry_after,
        )


class NotFound(ApiError):
    """404: the object (or its namespace, or the resource type) does not exist."""


class Conflict(ApiError):
    """409 Conflict: the resourceVersion we wrote against is stale; re-read and retry."""


class AlreadyExists(Conflict):
    """409 AlreadyExists: create of a name that is taken (deterministic names make this a no-op)."""


class Gone(ApiError):
    """410 Gone: the resourceVersion is older than etcd's compaction window; relist."""


class TooManyRequests(ApiError):
    """429: the apiserver asks us to back off for ``retry_after`` seconds."""


class Invalid(ApiError):
    """422: the object failed validation (the message names the fields)."""


class WriteFenced(RuntimeError):
    """Raised by the client INSTEAD of sending a write (POST, PUT, PATCH, DELETE) while its
    write fence forbids writing: a leader-elected process that lost its Lease, or that is
    past its renew deadline, must not change anything (another replica may lead already).
    Nothing reached the apiserver; the message says why the write was refused."""


_BY_STATUS: dict[int, type[ApiError]] = {
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
    429: TooManyRequests,
}

"""Azure failures, classified: the reason a Machine condition carries, and ARM's words.

`classify` turns whatever the SDK, azure-identity or the transport raised into an
`AzureError` whose `ErrorReason` is the ``MachineLaunched=False`` condition reason and
whose message is ARM's own (truncated to 800 characters, PROVISIONER.md). Quota
problems are recognised by their message too: ARM often reports them as
OperationNotAllowed.
"""

from __future__ import annotations

import enum

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

__all__ = ["MAX_MESSAGE", "AzureError", "ErrorReason", "classify"]

MAX_MESSAGE = 800
"""ARM messages are truncated to this many characters on conditions (PROVISIONER.md)."""


class ErrorReason(enum.StrEnum):
    """Why Azure refused: the ``MachineLaunched=False`` condition reason."""

    QUOTA_EXCEEDED = "QuotaExceeded"
    SKU_NOT_AVAILABLE = "SkuNotAvailable"
    ALLOCATION_FAILED = "AllocationFailed"
    OPERATION_NOT_ALLOWED = "OperationNotAllowed"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    THROTTLED = "Throttled"
    """429 that outlasted the SDK's retries."""
    AZURE_SERVER_ERROR = "AzureServerError"
    """408/5xx that outlasted the SDK's retries."""
    AZURE_UNREACHABLE = "AzureUnreachable"
    """No HTTP answer at all (DNS, TCP, TLS)."""
    INVALID_REQUEST = "InvalidAzureRequest"
    """ARM rejected the request as invalid (400 InvalidParameter and the like)."""
    LAUNCH_FAILED = "LaunchFailed"
    """Anything else, including an agent pool left in provisioningState Failed."""


class AzureError(Exception):
    """An ARM failure, classified. ``str()`` is ``"<code>: <message>"`` (truncated)."""

    def __init__(
        self,
        reason: ErrorReason,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        in_progress: bool = False,
    ) -> None:
        self.reason = reason
        self.status = status
        self.code = code
        self.message = message
        self.in_progress = in_progress
        """409 "another operation is in progress": not a failure, just wait."""
        text = f"{code}: {message}" if code else message
        if len(text) > MAX_MESSAGE:
            text = text[: MAX_MESSAGE - 3] + "..."
        super().__init__(text)


_AUTH_CODES = frozenset(
    {
        "authenticationfailed",
        "authorizationfailed",
        "invalidauthenticationtoken",
        "invalidauthenticationtokentenant",
        "linkedauthorizationfailed",
        "expiredauthenticationtoken",
    }
)
_SKU_CODES = frozenset({"skunotavailable", "vmsizenotsupported", "skunotsupported"})
_ALLOCATION_CODES = frozenset(
    {
        "allocationfailed",
        "zonalallocationfailed",
        "overconstrainedallocationrequest",
        "overconstrainedzonalallocationrequest",
    }
)


def classify(exc: BaseException) -> AzureError:
    """Turn an SDK / identity / transport exception into an `AzureError`."""
    if isinstance(exc, AzureError):
        return exc
    status: int | None = None
    code = ""
    message = str(exc)
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        if exc.error is not None:
            code = exc.error.code or ""
            message = exc.error.message or message
        elif exc.message:
            message = exc.message
    message = " ".join(message.split())
    low_code, low_msg = code.lower(), message.lower()
    reason: ErrorReason
    if (
        isinstance(exc, ClientAuthenticationError)
        or status in (401, 403)
        or low_code in _AUTH_CODES
    ):
        reason = ErrorReason.AUTHENTICATION_FAILED
    elif "quota" in low_code or "quota" in low_msg:
        reason = ErrorReason.QUOTA_EXCEEDED
    elif low_code in _SKU_CODES or ("not available" in low_msg and "size" in low_msg):
        reason = ErrorReason.SKU_NOT_AVAILABLE
    elif low_code in _ALLOCATION_CODES or "allocation failed" in low_msg:
        reason = ErrorReason.ALLOCATION_FAILED
    elif low_code == "operationnotallowed":
        reason = ErrorReason.OPERATION_NOT_ALLOWED
    elif status == 429:
        reason = ErrorReason.THROTTLED
    elif status is not None and (status == 408 or status >= 500):
        reason = ErrorReason.AZURE_SERVER_ERROR
    elif isinstance(exc, ServiceRequestError | ServiceResponseError):
        reason = ErrorReason.AZURE_UNREACHABLE
    elif status == 400:
        reason = ErrorReason.INVALID_REQUEST
    else:
        reason = ErrorReason.LAUNCH_FAILED
    in_progress = status == 409 and "in progress" in low_msg
    return AzureError(reason, message, status=status, code=code or None, in_progress=in_progress)

"""Fault injection for the AKS emulator: the ARM failures a real subscription produces.

A `Fault` matches requests by operation (and optionally pool name and VM size) and
answers them the way ARM does, ``times`` times (None: until cleared). Tests inject
them in-process (``emulator.inject(Fault(FaultKind.QUOTA))``); other processes POST
the same fields as JSON to ``/_emulator/faults``.

| kind                  | answer                                                      |
|-----------------------|-------------------------------------------------------------|
| throttle              | 429 TooManyRequests with ``Retry-After: retry_after``       |
| server-error          | 500 InternalServerError                                     |
| quota                 | 400 QuotaExceeded (preflight validation of the PUT)         |
| sku-unavailable       | 400 SkuNotAvailable                                         |
| failed-lro            | PUT accepted (201); the operation ends Failed             |
|                       | (AllocationFailed), the pool is left Failed               |
| operation-not-allowed | 409 OperationNotAllowed                                     |
| auth                  | 401 InvalidAuthenticationToken                              |
| node-never-joins      | the pool is created, but its VM never registers a Node    |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from kaito.runtime.faults import FaultQueue, fault_fields, fault_json

__all__ = ["ALLOCATION_FAILED", "Fault", "FaultInjector", "FaultKind", "Op", "arm_answer"]


class Op(enum.StrEnum):
    """What a request does; faults match on it."""

    CREATE = "create"
    GET = "get"
    LIST = "list"
    DELETE = "delete"
    POLL = "poll"
    """GETs of Azure-AsyncOperation / Location URLs."""
    ANY = "any"


class FaultKind(enum.StrEnum):
    THROTTLE = "throttle"
    SERVER_ERROR = "server-error"
    QUOTA = "quota"
    SKU_UNAVAILABLE = "sku-unavailable"
    FAILED_LRO = "failed-lro"
    OPERATION_NOT_ALLOWED = "operation-not-allowed"
    AUTH = "auth"
    NODE_NEVER_JOINS = "node-never-joins"


@dataclass
class Fault:
    kind: FaultKind
    op: Op = Op.CREATE
    """Which operation it hits; default create (the PUT)."""
    pool: str | None = None
    """Only this agent pool; default any."""
    vm_size: str | None = None
    """Only PUTs of this VM size (case-insensitive); default any."""
    times: int | None = 1
    """How many matching requests it answers; None: until cleared. Default 1."""
    retry_after: int = 1
    """The Retry-After seconds of a throttle answer. Default 1."""
    code: str | None = None
    """Override the ARM error code (e.g. ZonalAllocationFailed for failed-lro)."""
    message: str | None = None
    """Override the ARM error message."""
    hits: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        self.kind = FaultKind(self.kind)
        self.op = Op(self.op)
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1 (or None for until cleared)")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        fault_fields(
            data, {"kind", "op", "pool", "vm_size", "times", "retry_after", "code", "message"}
        )
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return fault_json(self)

    def matches(self, op: Op, pool: str | None, vm_size: str | None) -> bool:
        if self.op is not Op.ANY and self.op is not op:
            return False
        if self.pool is not None and self.pool != pool:
            return False
        return self.vm_size is None or (
            vm_size is not None and self.vm_size.lower() == vm_size.lower()
        )


class FaultInjector(FaultQueue[Fault]):
    """The active faults (`FaultQueue`: first match wins, dropped when ``times`` run out)."""

    def take(self, op: Op, pool: str | None = None, vm_size: str | None = None) -> Fault | None:
        return self.take_first(lambda f: f.matches(op, pool, vm_size))


# What ARM answers for each fault (status, code, message); messages are ARM's own
# wording, with the cluster's names filled in.
_ANSWERS: dict[FaultKind, tuple[int, str, str]] = {
    FaultKind.THROTTLE: (
        429,
        "TooManyRequests",
        "The request is being throttled as the limit has been reached for operation type - "
        "Write_ObservationWindow_1Minutes. For more information, see - "
        "https://aka.ms/srpthrottlinglimits",
    ),
    FaultKind.SERVER_ERROR: (
        500,
        "InternalServerError",
        "An internal server error occurred. Please retry the request.",
    ),
    FaultKind.QUOTA: (
        400,
        "QuotaExceeded",
        "Preflight validation check for resource(s) for container service {cluster} in resource "
        "group MC_{resource_group}_{cluster}_{location} failed. Message: Operation could not be "
        "completed as it results in exceeding approved standardNCSv3Family Cores quota. "
        "Additional details - Deployment Model: Resource Manager, Location: {location}, Current "
        "Limit: 0, Current Usage: 0, Additional Required: 12, (Minimum) New Limit Required: 12. "
        "Submit a request for Quota increase at https://aka.ms/ProdportalCRP/#blade/"
        "Microsoft_Azure_Capacity/UsageAndQuota.ReactView by specifying parameters listed in the "
        "'Details' section for deployment to succeed.",
    ),
    FaultKind.SKU_UNAVAILABLE: (
        400,
        "SkuNotAvailable",
        "The requested VM size for resource 'Following SKUs have failed for Capacity "
        "Restrictions: {vm_size}' is currently not available in location '{location}'. Please "
        "try another size or deploy to a different location or different zone. See "
        "https://aka.ms/azureskunotavailable for details.",
    ),
    FaultKind.OPERATION_NOT_ALLOWED: (
        409,
        "OperationNotAllowed",
        "Operation is not allowed because the managed cluster is in a Stopped state.",
    ),
    FaultKind.AUTH: (
        401,
        "InvalidAuthenticationToken",
        "The access token is invalid: the token has expired or its signature does not verify.",
    ),
}

ALLOCATION_FAILED = (
    "Allocation failed. We do not have sufficient capacity for the requested VM size in this "
    "region. Read more about improving likelihood of allocation success at "
    "http://aka.ms/allocation-guidance"
)
"""The error of a failed-lro fault's operation (code AllocationFailed)."""


def arm_answer(
    fault: Fault, *, cluster: str, resource_group: str, location: str, vm_size: str | None
) -> tuple[int, str, str, dict[str, str]] | None:
    """(status, code, message, headers) to answer at once; None for faults that strike later
    (failed-lro, node-never-joins)."""
    answer = _ANSWERS.get(fault.kind)
    if answer is None:
        return None
    status, code, template = answer
    message = fault.message or template.format(
        cluster=cluster, resource_group=resource_group, location=location, vm_size=vm_size
    )
    headers = {"Retry-After": str(fault.retry_after)} if fault.kind is FaultKind.THROTTLE else {}
    return status, fault.code or code, message, headers

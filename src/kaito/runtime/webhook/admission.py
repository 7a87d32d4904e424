"""``admission.k8s.io/v1`` AdmissionReview: the request a webhook gets, the answer it gives.

As controller-runtime's ``pkg/webhook/admission``: a `Handler` sees a decoded
`AdmissionRequest` and returns an `AdmissionResponse`; the server (`server.py`) decodes,
calls, and encodes, so a handler never touches JSON envelopes or the request's ``uid``.

Constructors read as upstream's: `allowed`, `denied` (403 Forbidden), `errored` (the
handler failed: deny with its code) and `invalid` (422 Invalid with field causes, the
shape the apiserver's own validation uses, so a client treats a rejected spec the same
whichever of the two rejected it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from kaito.runtime.meta import Obj

__all__ = [
    "API_VERSION",
    "AdmissionRequest",
    "AdmissionResponse",
    "Cause",
    "Handler",
    "HandlerFunc",
    "MalformedReview",
    "allowed",
    "decode_review",
    "denied",
    "encode_review",
    "errored",
    "invalid",
]

API_VERSION = "admission.k8s.io/v1"


class MalformedReview(ValueError):
    """The body is not an ``admission.k8s.io/v1`` AdmissionReview with a request and uid."""


@dataclass(frozen=True)
class AdmissionRequest:
    """The ``request`` of an AdmissionReview, with the fields handlers use named.

    ``object``/``old_object`` stay raw dicts: a handler builds its own typed model from
    them (or validates the dict itself) at the edge, as reconcilers do.
    """

    uid: str
    operation: str
    """CREATE, UPDATE, DELETE or CONNECT."""
    name: str
    namespace: str
    kind: Obj = field(default_factory=dict)
    """``{"group", "version", "kind"}`` of the object."""
    resource: Obj = field(default_factory=dict)
    sub_resource: str = ""
    object: Obj | None = None
    old_object: Obj | None = None
    """Only on UPDATE (and DELETE, where it is the object being deleted)."""
    dry_run: bool = False
    user_info: Obj = field(default_factory=dict)
    raw: Obj = field(default_factory=dict)
    """The whole ``request`` as sent, for fields not named above."""


@dataclass(frozen=True)
class Cause:
    """One field's failure in an `invalid` answer (``metav1.StatusCause``)."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"


@dataclass(frozen=True)
class AdmissionResponse:
    """What a handler decides; `encode_review` adds the request's uid."""

    allowed: bool
    status: Obj | None = None
    """A ``metav1.Status`` (code, reason, message, details); None when allowed silently."""
    warnings: tuple[str, ...] = ()
    """Shown by kubectl as ``Warning:`` lines, allowed or not."""

    def with_warnings(self, *warnings: str) -> AdmissionResponse:
        return AdmissionResponse(self.allowed, self.status, (*self.warnings, *warnings))

    @property
    def code(self) -> int:
        return int((self.status or {}).get("code", 200))


def allowed(message: str = "") -> AdmissionResponse:
    status = {"code": 200, "message": message} if message else None
    return AdmissionResponse(True, status)


def denied(message: str, *, code: int = 403, reason: str = "Forbidden") -> AdmissionResponse:
    return AdmissionResponse(False, {"code": code, "reason": reason, "message": message})


def errored(code: int, error: BaseException | str) -> AdmissionResponse:
    """The handler could not decide (``admission.Errored``): deny, saying why."""
    return AdmissionResponse(False, {"code": code, "message": str(error)})


def invalid(causes: Sequence[Cause], *, group: str, kind: str, name: str = "") -> AdmissionResponse:
    """Deny as the apiserver's ``NewInvalid`` does: 422, every cause in the message."""
    message = "; ".join(f"{c.field}: {c.message}" for c in causes)
    return AdmissionResponse(
        False,
        {
            "code": 422,
            "reason": "Invalid",
            "message": message,
            "details": {
                "group": group,
                "kind": kind,
                "name": name,
                "causes": [
                    {"field": c.field, "message": c.message, "reason": c.reason} for c in causes
                ],
            },
        },
    )


class Handler(Protocol):
    """Decides one admission request (``admission.Handler``)."""

    async def handle(self, request: AdmissionRequest) -> AdmissionResponse: ...


@dataclass(frozen=True)
class HandlerFunc:
    """A function as a `Handler` (``admission.HandlerFunc``)."""

    func: Callable[[AdmissionRequest], Awaitable[AdmissionResponse]]

    async def handle(self, request: AdmissionRequest) -> AdmissionResponse:
        return await self.func(request)


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def decode_review(body: bytes) -> AdmissionRequest:
    """Parse an AdmissionReview; raises `MalformedReview` without a request and uid.

    An object without a namespace gets the request's (the apiserver leaves it out of
    objects created through a namespaced URL).
    """
    try:
        review = orjson.loads(body)
        req = review["request"]
        uid = str(req["uid"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise MalformedReview(f"expected an {API_VERSION} AdmissionReview") from e
    if not isinstance(req, dict):
        raise MalformedReview(f"expected an {API_VERSION} AdmissionReview")
    namespace = str(req.get("namespace") or "")
    obj = req.get("object") if isinstance(req.get("object"), dict) else None
    if obj is not None:
        meta = obj.setdefault("metadata", {})
        if not meta.get("namespace") and namespace:
            meta["namespace"] = namespace
    old = req.get("oldObject") if isinstance(req.get("oldObject"), dict) else None
    name = str(((obj or {}).get("metadata") or {}).get("name") or req.get("name") or "")
    return AdmissionRequest(
        uid=uid,
        operation=str(req.get("operation") or ""),
        name=name,
        namespace=namespace,
        kind=_dict(req.get("kind")),
        resource=_dict(req.get("resource")),
        sub_resource=str(req.get("subResource") or ""),
        object=obj,
        old_object=old,
        dry_run=bool(req.get("dryRun")),
        user_info=_dict(req.get("userInfo")),
        raw=req,
    )


def encode_review(uid: str, response: AdmissionResponse) -> Obj:
    """The AdmissionReview the apiserver expects back."""
    body: Obj = {"uid": uid, "allowed": response.allowed}
    if response.status is not None:
        body["status"] = response.status
    if response.warnings:
        body["warnings"] = list(response.warnings)
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": body}

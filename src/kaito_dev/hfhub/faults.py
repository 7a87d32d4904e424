"""Fault injection for the hub emulator: what a flaky hub or network does to a download.

A `Fault` matches requests by scope (and optionally a repo file path glob) and acts on
them ``times`` times (None: until cleared). Tests inject them in-process
(``hub.inject(Fault(FaultKind.RESET, after_bytes=4096))``); other processes POST the same
fields as JSON to ``/_emulator/faults`` (``DELETE`` clears them).

| kind         | effect                                                                  |
|--------------|-------------------------------------------------------------------------|
| server-error | answer ``status`` (default 503) with the hub's JSON error body at once   |
| reset        | file content: send the headers and ``after_bytes`` bytes of the body,   |
|              | then close the connection (the client sees a truncated body)            |
| slow         | file content: stream at ``bytes_per_second``                            |

Scopes: ``api`` (``/api/...``: revision info, tree listing), ``resolve`` (``/{repo}/resolve``
HEAD and GET), ``cdn`` (the LFS blob host), ``content`` (a GET that sends file bytes, on
either host), ``any``. ``reset`` and ``slow`` only act on requests that send file bytes.
"""

from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass, field
from typing import Any

from kaito.runtime.faults import FaultQueue, fault_fields, fault_json

__all__ = ["Fault", "FaultInjector", "FaultKind", "Scope"]


class FaultKind(enum.StrEnum):
    SERVER_ERROR = "server-error"
    RESET = "reset"
    SLOW = "slow"


class Scope(enum.StrEnum):
    API = "api"
    RESOLVE = "resolve"
    CDN = "cdn"
    CONTENT = "content"
    ANY = "any"


@dataclass
class Fault:
    kind: FaultKind
    scope: Scope = Scope.ANY
    """Which requests it hits (see the module doc); default any."""
    path: str | None = None
    """Only requests for repo files matching this glob (``*.safetensors``); default any."""
    times: int | None = 1
    """How many matching requests it acts on; None: until cleared. Default 1 (slow: None)."""
    status: int = 503
    """server-error: the status answered. Default 503."""
    after_bytes: int = 0
    """reset: body bytes sent before the connection is closed. Default 0."""
    bytes_per_second: int = 0
    """slow: the rate the body is streamed at; must be > 0 for slow."""
    hits: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        self.kind = FaultKind(self.kind)
        self.scope = Scope(self.scope)
        if self.times is not None and self.times < 1:
            raise ValueError("times: must be >= 1 (or null for until cleared)")
        if self.kind is FaultKind.SERVER_ERROR and not 500 <= self.status <= 599:
            raise ValueError(f"status: {self.status} is not a 5xx status")
        if self.kind is FaultKind.RESET and self.after_bytes < 0:
            raise ValueError("after_bytes: must be >= 0")
        if self.kind is FaultKind.SLOW and self.bytes_per_second <= 0:
            raise ValueError("bytes_per_second: must be > 0 for a slow fault")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        fault_fields(
            data, {"kind", "scope", "path", "times", "status", "after_bytes", "bytes_per_second"}
        )
        if "kind" not in data:
            raise ValueError(f"kind: required, one of {[str(k) for k in FaultKind]}")
        if data["kind"] == FaultKind.SLOW and "times" not in data:
            data = {**data, "times": None}
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return fault_json(self)

    def matches(self, scope: Scope, file: str | None, *, content: bool) -> bool:
        if self.kind is not FaultKind.SERVER_ERROR and not content:
            return False
        if self.scope is Scope.CONTENT:
            if not content:
                return False
        elif self.scope is not Scope.ANY and self.scope is not scope:
            return False
        return self.path is None or (file is not None and fnmatch.fnmatch(file, self.path))


class FaultInjector(FaultQueue[Fault]):
    """The active faults (`FaultQueue`: first match wins, dropped when ``times`` run out)."""

    def take(
        self, scope: Scope, file: str | None, *, content: bool, kinds: tuple[FaultKind, ...]
    ) -> Fault | None:
        return self.take_first(
            lambda f: f.kind in kinds and f.matches(scope, file, content=content)
        )

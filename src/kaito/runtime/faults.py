"""What the emulators' fault injection shares: a queue of faults with ``times``, and the
``/_emulator/faults`` control routes.

Each emulator (the AKS one in `kaito_dev.aks`, the hub one in
`kaito_dev.hfhub`) defines its own `Fault` dataclass: its kinds, what it matches on and
what it does. What is the same everywhere lives here: a fault acts on ``times``
matching requests (None: until cleared) and is then dropped, ``hits`` counts what it
acted on, the first match wins; over HTTP a POST of the fault's fields as JSON adds one
and a DELETE clears them all.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import web

__all__ = ["FaultQueue", "InjectedFault", "add_fault_routes", "fault_fields", "fault_json"]


class InjectedFault(Protocol):
    times: int | None
    hits: int

    def to_json(self) -> dict[str, Any]: ...


F = TypeVar("F", bound=InjectedFault)


class FaultQueue(Generic[F]):
    """The active faults, first match wins; a fault is dropped when its ``times`` run out."""

    def __init__(self) -> None:
        self.faults: list[F] = []

    def add(self, fault: F) -> F:
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()

    def take_first(self, match: Callable[[F], bool]) -> F | None:
        """The first fault ``match`` accepts, counted as having acted once."""
        for fault in self.faults:
            if match(fault):
                fault.hits += 1
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                return fault
        return None


def fault_fields(data: dict[str, Any], allowed: Iterable[str]) -> None:
    """`ValueError` for a JSON fault with a field not in ``allowed``."""
    unknown = set(data) - set(allowed)
    if unknown:
        raise ValueError(f"unknown fault fields: {sorted(unknown)}")


def fault_json(fault: Any) -> dict[str, Any]:
    """A fault dataclass as JSON: its fields, enums as their strings."""
    return {k: str(v) if isinstance(v, enum.Enum) else v for k, v in asdict(fault).items()}


def add_fault_routes(
    router: web.UrlDispatcher, faults: FaultQueue[F], parse: Callable[[dict[str, Any]], F]
) -> None:
    """``POST /_emulator/faults`` (a fault's fields as JSON, parsed by ``parse``: 201 with
    the fault, 400 with ``{"error"}``) and ``DELETE /_emulator/faults`` (204, all cleared)."""

    async def add(request: web.Request) -> web.Response:
        try:
            fault = parse(await request.json())
        except (ValueError, TypeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        faults.add(fault)
        return web.json_response(fault.to_json(), status=201)

    async def clear(request: web.Request) -> web.Response:
        faults.clear()
        return web.Response(status=204)

    router.add_post("/_emulator/faults", add)
    router.add_delete("/_emulator/faults", clear)
